"""The running batch's KV cache: rows join (left-padded to a common length) and leave."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

Legacy = tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer: ([B, H, T, D], [B, H, T, D])


def _cache(layers: Legacy) -> Any:
    return DynamicCache.from_legacy_cache(layers)  # type: ignore[arg-type]


def _legacy(cache: Any) -> Legacy:
    return tuple((layer.keys, layer.values) for layer in cache.layers)


def _pad_left(t: torch.Tensor, length: int) -> torch.Tensor:
    """Left-pad the time axis (dim 2) of `[B, H, T, D]` with zeros up to `length`."""
    extra = length - t.shape[2]
    return t if extra == 0 else F.pad(t, (0, 0, extra, 0))


class KVBatch:
    """KV cache and attention mask of the rows being decoded together.

    Rows are left-padded to a common length; padding positions are masked out, and each row
    keeps its own position ids, so a row computes what it would compute alone.
    """

    def __init__(self) -> None:
        self.cache: Any = None  # DynamicCache over [B, H, T, D]
        self.mask: torch.Tensor | None = None  # [B, T] 1 = real token, 0 = padding

    @property
    def size(self) -> int:
        """Rows in the batch."""
        return 0 if self.mask is None else int(self.mask.shape[0])

    @property
    def length(self) -> int:
        """Common time length T."""
        return 0 if self.mask is None else int(self.mask.shape[1])

    def join(self, parts: list[tuple[Any, torch.Tensor]]) -> None:
        """Append rows: each part is a cache `[n, H, T', D]` with its mask `[n, T']`.

        All parts join in one copy, so admitting many requests at a step costs one re-pad.
        """
        if self.cache is not None and self.mask is not None:
            parts = [(self.cache, self.mask), *parts]
        if not parts:
            return
        if len(parts) == 1:
            self.cache, self.mask = parts[0]
            return
        length = max(int(mask.shape[1]) for _, mask in parts)
        layers = [_legacy(cache) for cache, _ in parts]
        self.cache = _cache(
            tuple(
                (
                    torch.cat([_pad_left(part[i][0], length) for part in layers], dim=0),
                    torch.cat([_pad_left(part[i][1], length) for part in layers], dim=0),
                )
                for i in range(len(layers[0]))
            )
        )
        self.mask = torch.cat(
            [F.pad(mask, (length - int(mask.shape[1]), 0)) for _, mask in parts], dim=0
        )

    def keep(self, rows: list[int]) -> None:
        """Keep only the given rows (in that order); drop columns that are padding for all."""
        if self.cache is None or self.mask is None:
            return
        if not rows:
            self.cache, self.mask = None, None
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        real = mask.any(dim=0).nonzero()
        start = int(real[0].item()) if len(real) else 0
        self.cache = _cache(
            tuple(
                (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
                for k, v in _legacy(self.cache)
            )
        )
        self.mask = mask[:, start:].contiguous()

    def extend_mask(self) -> torch.Tensor:
        """The mask for one more decoded token per row (`[B, T + 1]`), stored and returned."""
        assert self.mask is not None
        self.mask = F.pad(self.mask, (0, 1), value=1)
        return self.mask
