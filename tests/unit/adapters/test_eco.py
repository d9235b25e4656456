"""Unit tests for adapters.eco: seeded, scale-relative corruption of chosen embedding rows."""

from __future__ import annotations

import pytest
import torch

from adapters.eco import corrupt_embeddings


@pytest.fixture()
def embeds() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(12, 64, generator=gen)  # [seq, hidden]


def test_untouched_positions_are_bit_identical(embeds: torch.Tensor) -> None:
    positions = [2, 5, 6]
    out = corrupt_embeddings(embeds, positions, sigma=1.0, seed=7)
    for row in range(len(embeds)):
        if row in positions:
            assert not torch.equal(out[row], embeds[row]), row
        else:
            assert torch.equal(out[row], embeds[row]), row


def test_input_is_not_modified(embeds: torch.Tensor) -> None:
    before = embeds.clone()
    corrupt_embeddings(embeds, [0, 1], sigma=2.0, seed=1)
    assert torch.equal(embeds, before)


def test_same_seed_same_noise_different_seed_different_noise(embeds: torch.Tensor) -> None:
    a = corrupt_embeddings(embeds, [1, 3], sigma=0.5, seed=123)
    b = corrupt_embeddings(embeds, [1, 3], sigma=0.5, seed=123)
    c = corrupt_embeddings(embeds, [1, 3], sigma=0.5, seed=124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_seed_above_int63_is_accepted(embeds: torch.Tensor) -> None:
    # noise_seed() yields unsigned 64-bit values.
    big = 2**64 - 1
    a = corrupt_embeddings(embeds, [0], sigma=1.0, seed=big)
    assert torch.equal(a, corrupt_embeddings(embeds, [0], sigma=1.0, seed=big))


def test_position_order_and_duplicates_do_not_matter(embeds: torch.Tensor) -> None:
    a = corrupt_embeddings(embeds, [4, 1, 4, 9], sigma=1.0, seed=5)
    b = corrupt_embeddings(embeds, [1, 4, 9], sigma=1.0, seed=5)
    assert torch.equal(a, b)


def test_sigma_zero_is_identity(embeds: torch.Tensor) -> None:
    out = corrupt_embeddings(embeds, [0, 1, 2], sigma=0.0, seed=9)
    assert torch.equal(out, embeds)


def test_no_positions_is_identity(embeds: torch.Tensor) -> None:
    assert torch.equal(corrupt_embeddings(embeds, [], sigma=3.0, seed=9), embeds)


def test_noise_is_relative_to_each_rows_rms() -> None:
    hidden = 8192
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(3, hidden, generator=gen)
    scales = torch.tensor([[0.01], [1.0], [100.0]])
    embeds = base * scales
    sigma = 0.5
    out = corrupt_embeddings(embeds, [0, 1, 2], sigma=sigma, seed=11)
    noise = out - embeds
    rms = embeds.pow(2).mean(dim=-1).sqrt()
    ratio = noise.pow(2).mean(dim=-1).sqrt() / rms
    assert torch.allclose(ratio, torch.full((3,), sigma), rtol=0.05)


def test_scaling_the_embeddings_scales_the_noise_exactly() -> None:
    gen = torch.Generator().manual_seed(2)
    embeds = torch.randn(6, 32, generator=gen, dtype=torch.float64)
    small = corrupt_embeddings(embeds, [1, 2], sigma=1.3, seed=3) - embeds
    large = corrupt_embeddings(embeds * 1000, [1, 2], sigma=1.3, seed=3) - embeds * 1000
    assert torch.allclose(large, small * 1000, rtol=1e-4, atol=1e-6)


def test_stronger_sigma_gives_proportionally_stronger_noise(embeds: torch.Tensor) -> None:
    one = corrupt_embeddings(embeds, [3], sigma=1.0, seed=4) - embeds
    three = corrupt_embeddings(embeds, [3], sigma=3.0, seed=4) - embeds
    assert torch.allclose(three, one * 3, rtol=1e-4, atol=1e-5)


def test_dtype_and_shape_are_kept() -> None:
    embeds = torch.randn(5, 16).to(torch.bfloat16)
    out = corrupt_embeddings(embeds, [0, 4], sigma=1.0, seed=0)
    assert out.dtype == torch.bfloat16 and out.shape == embeds.shape
    assert torch.equal(out[1:4], embeds[1:4])
