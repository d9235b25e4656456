"""ECO: corrupts the input embeddings of flagged token positions (Liu et al. 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def corrupt_embeddings(
    embeds: torch.Tensor, positions: Sequence[int], sigma: float, seed: int
) -> torch.Tensor:
    """Add Gaussian noise of `sigma` times each token's embedding RMS at `positions`.

    Noise is relative to the embedding scale so that one sigma means the same on any model, and
    seeded so the same conversation gets the same corruption (repeat queries cannot average the
    noise away).

    Args:
        embeds: `[seq, hidden]` embeddings of one row (not modified).
        positions: token indices to corrupt.
        sigma: noise strength; 0 returns the input unchanged.
        seed: seed of the noise generator.

    Example:
        >>> e = torch.ones(4, 8)
        >>> out = corrupt_embeddings(e, [1, 2], 1.0, seed=0)
        >>> bool(torch.equal(out[0], e[0])), bool(torch.equal(out[1], e[1]))
        (True, False)
    """
    if sigma <= 0 or not positions:
        return embeds
    idx = torch.tensor(sorted(set(positions)), dtype=torch.long, device=embeds.device)
    gen = torch.Generator(device="cpu").manual_seed(seed & 0x7FFFFFFFFFFFFFFF)
    picked = embeds.index_select(0, idx).float()  # [k, hidden]
    rms = picked.pow(2).mean(dim=-1, keepdim=True).sqrt()  # [k, 1]
    noise = torch.randn(picked.shape, generator=gen).to(embeds.device)  # [k, hidden]
    out = embeds.clone()
    out[idx] = (picked + sigma * rms * noise).to(embeds.dtype)
    return out
