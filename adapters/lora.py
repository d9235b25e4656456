"""LoRA adapters in PEFT's file format: parse, validate against the served model, serialise.

The gateway does not wrap the model with PEFT: it keeps each adapter's low-rank factors and
adds `scale * (x A^T) B^T` to the chosen linear layers for the rows that ask for it
(adapters/patches.py), so many adapters can serve one batch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

_PREFIX = "base_model.model."
_A, _B = ".lora_A.weight", ".lora_B.weight"


class AdapterError(ValueError):
    """An adapter does not fit the served model; the message says why."""


@dataclass(frozen=True)
class LoraWeights:
    """Low-rank factors per linear layer: `W x + scaling * B (A x)`."""

    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (A [r, in], B [out, r])
    scaling: float
    rank: int

    def to(self, device: torch.device, dtype: torch.dtype) -> LoraWeights:
        """A copy on the model's device and dtype."""
        return LoraWeights(
            modules={
                n: (a.to(device, dtype), b.to(device, dtype)) for n, (a, b) in self.modules.items()
            },
            scaling=self.scaling,
            rank=self.rank,
        )

    def peft_config(self) -> dict[str, Any]:
        """An adapter_config.json that PEFT and this gateway both read."""
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.rank,
            "lora_alpha": self.scaling * self.rank,
            "target_modules": sorted({n.rsplit(".", 1)[-1] for n in self.modules}),
            "bias": "none",
            "fan_in_fan_out": False,
            "use_rslora": False,
            "use_dora": False,
            "lora_dropout": 0.0,
        }

    def to_bytes(self) -> bytes:
        """PEFT-format safetensors with the adapter config in the metadata."""
        tensors: dict[str, torch.Tensor] = {}
        for name, (a, b) in self.modules.items():
            tensors[f"{_PREFIX}{name}{_A}"] = a.detach().float().contiguous().cpu()
            tensors[f"{_PREFIX}{name}{_B}"] = b.detach().float().contiguous().cpu()
        return save_safetensors(
            tensors, metadata={"adapter_config": json.dumps(self.peft_config())}
        )

    @staticmethod
    def from_bytes(data: bytes, model: nn.Module, max_rank: int) -> LoraWeights:
        """Inverse of `to_bytes` (validated again: the served model may have changed)."""
        tensors = load_safetensors(data)
        config = json.loads(_metadata(data).get("adapter_config", "{}"))
        return parse_peft(config, tensors, model, max_rank)


def _metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob (its JSON header)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    meta: dict[str, str] = header.get("__metadata__", {}) or {}
    return meta


def _float32(value: object) -> float | None:
    """`value` as a float when it is a JSON number a float32 holds (the dtype adapters are
    applied in), else None: so a config can never make the scale of a batch row non-finite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int past float range
        return None
    if not math.isfinite(number) or abs(number) > torch.finfo(torch.float32).max:
        return None
    return number


def parse_peft(
    config: dict[str, Any], tensors: dict[str, torch.Tensor], model: nn.Module, max_rank: int
) -> LoraWeights:
    """Validate a PEFT LoRA (config + weights) against `model` and return its factors.

    Raises:
        AdapterError: not a LoRA, unsupported options, rank above `max_rank`, a module the model
            does not have or that is not linear, or factor shapes that do not match.
    """
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterError(
            f"adapter_config.json peft_type is {config.get('peft_type')!r}, not LORA"
        )
    for flag in ("use_dora", "fan_in_fan_out"):
        if config.get(flag):
            raise AdapterError(f"adapter option {flag}=true is not supported")
    if config.get("bias", "none") != "none":
        raise AdapterError("adapter bias must be 'none'")
    if config.get("modules_to_save"):
        raise AdapterError("adapters with modules_to_save (full layer copies) are not supported")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise AdapterError("adapter_config.json must give an integer rank r >= 1")
    if rank > max_rank:
        raise AdapterError(f"adapter rank {rank} exceeds LETHE_MAX_LORA_RANK={max_rank}")
    alpha = _float32(config.get("lora_alpha", rank))
    if alpha is None:
        raise AdapterError("adapter_config.json lora_alpha must be a finite number")
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank

    named = dict(model.named_modules())
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if not key.endswith((_A, _B)):
            raise AdapterError(f"unexpected tensor {key!r} in the adapter weights")
        name = key.removeprefix(_PREFIX)[: -len(_A)]
        factors.setdefault(name, {})["A" if key.endswith(_A) else "B"] = tensor
    if not factors:
        raise AdapterError("the adapter holds no LoRA weights")

    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, pair in sorted(factors.items()):
        module = named.get(name)
        if module is None:
            raise AdapterError(f"the served model has no module {name!r}")
        if not isinstance(module, nn.Linear):
            raise AdapterError(f"module {name!r} is not a linear layer")
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"module {name!r} lacks its lora_A or lora_B weight")
        a, b = pair["A"].float(), pair["B"].float()
        if tuple(a.shape) != (rank, module.in_features) or tuple(b.shape) != (
            module.out_features,
            rank,
        ):
            raise AdapterError(
                f"module {name!r}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit "
                f"a rank-{rank} adapter on a {module.in_features}->{module.out_features} layer"
            )
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterError(f"module {name!r} holds non-finite weights")
        modules[name] = (a, b)
    return LoraWeights(modules=modules, scaling=scaling, rank=rank)
