"""PEFT-format adapters: validation against a model, and the serialised round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adapters.lora import AdapterError, LoraWeights, parse_peft
from adapters.steering import SteeringVectors, band


class _Tiny(nn.Module):
    """A stand-in with the module names of a decoder (real layers, tiny sizes)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([nn.Module() for _ in range(2)])
        for layer in self.model.layers:
            layer.q_proj = nn.Linear(8, 8)
            layer.norm = nn.LayerNorm(8)


def _peft(rank: int = 2) -> tuple[dict, dict[str, torch.Tensor]]:
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 4, "target_modules": ["q_proj"]}
    prefix = "base_model.model.model.layers.0.q_proj"
    tensors = {
        f"{prefix}.lora_A.weight": torch.randn(rank, 8),
        f"{prefix}.lora_B.weight": torch.randn(8, rank),
    }
    return config, tensors


def test_a_fitting_adapter_parses_with_its_scaling() -> None:
    config, tensors = _peft()
    weights = parse_peft(config, tensors, _Tiny(), max_rank=4)
    assert weights.rank == 2 and weights.scaling == 2.0
    assert list(weights.modules) == ["model.layers.0.q_proj"]
    rs = parse_peft({**config, "use_rslora": True}, tensors, _Tiny(), max_rank=4)
    assert rs.scaling == pytest.approx(4 / 2**0.5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c, t: ({**c, "r": 8}, t), "LETHE_MAX_LORA_RANK"),
        (lambda c, t: ({**c, "peft_type": "IA3"}, t), "not LORA"),
        (lambda c, t: ({**c, "use_dora": True}, t), "use_dora"),
        (lambda c, t: ({**c, "bias": "all"}, t), "bias"),
        (lambda c, t: (c, {k.replace("q_proj", "k_proj"): v for k, v in t.items()}), "no module"),
        (lambda c, t: (c, {k.replace("q_proj", "norm"): v for k, v in t.items()}), "not a linear"),
        (lambda c, t: (c, {k: v for k, v in t.items() if "lora_B" not in k}), "lacks"),
        (lambda c, t: (c, {k: v[:, :4] if "lora_A" in k else v for k, v in t.items()}), "fit"),
        (lambda c, t: (c, {k: v * float("nan") for k, v in t.items()}), "non-finite"),
        (lambda c, t: (c, {**t, "extra.weight": torch.zeros(1)}), "unexpected"),
        (lambda c, t: ({**c, "r": True}, t), "integer rank"),
        (lambda c, t: ({**c, "lora_alpha": "16"}, t), "lora_alpha"),
        (lambda c, t: ({**c, "lora_alpha": None}, t), "lora_alpha"),
        (lambda c, t: ({**c, "lora_alpha": [4]}, t), "lora_alpha"),
        (lambda c, t: ({**c, "lora_alpha": float("nan")}, t), "lora_alpha"),
        (lambda c, t: ({**c, "lora_alpha": float("inf")}, t), "lora_alpha"),
        (lambda c, t: ({**c, "lora_alpha": 1e300}, t), "lora_alpha"),  # past float32
        (lambda c, t: ({**c, "lora_alpha": 10**400}, t), "lora_alpha"),  # past float
    ],
)
def test_adapters_that_do_not_fit_are_rejected(change, message: str) -> None:  # type: ignore[no-untyped-def]
    config, tensors = change(*_peft())
    with pytest.raises(AdapterError, match=message):
        parse_peft(config, tensors, _Tiny(), max_rank=4)


def test_adapter_bytes_round_trip() -> None:
    config, tensors = _peft()
    weights = parse_peft(config, tensors, _Tiny(), max_rank=4)
    again = LoraWeights.from_bytes(weights.to_bytes(), _Tiny(), max_rank=4)
    assert again.scaling == weights.scaling and again.rank == weights.rank
    for name, (a, b) in weights.modules.items():
        assert torch.equal(again.modules[name][0], a) and torch.equal(again.modules[name][1], b)


def test_steering_bytes_round_trip_and_band() -> None:
    vectors = SteeringVectors(layers=(4, 5, 6), vectors=torch.randn(3, 16))
    again = SteeringVectors.from_bytes(vectors.to_bytes())
    assert again.layers == (4, 5, 6) and torch.equal(again.vectors, vectors.vectors)
    assert band(30, 0.15, 0.65) == tuple(range(4, 20))
    assert band(2, 0.9, 1.0) == (1,)
