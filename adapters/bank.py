"""The interventions loaded on this replica: steering vectors and LoRA adapters per target."""

from __future__ import annotations

import threading

import torch

from adapters.lora import LoraWeights
from adapters.patches import RowEffect
from adapters.steering import SteeringVectors
from guards.verdict import Plan


class InterventionBank:
    """Thread-safe map from target id to its steering vectors and its adapter.

    The engine turns a row's plan into a `RowEffect` here; a plan that names a vector or an
    adapter this replica has not loaded yet gets no effect for it, and the engine falls back to
    ECO on the plan's spans, so a target is never left unenforced.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()
        self._steering: dict[str, SteeringVectors] = {}
        self._lora: dict[str, LoraWeights] = {}

    def put_steering(self, target_id: str, vectors: SteeringVectors) -> None:
        """Load or replace a target's steering vectors."""
        with self._lock:
            self._steering[target_id] = vectors

    def put_lora(self, target_id: str, weights: LoraWeights) -> None:
        """Load or replace a target's adapter (moved to the model's device and dtype)."""
        moved = weights.to(self.device, self.dtype)
        with self._lock:
            self._lora[target_id] = moved

    def remove(self, target_id: str) -> None:
        """Forget everything loaded for a target."""
        with self._lock:
            self._steering.pop(target_id, None)
            self._lora.pop(target_id, None)

    def has_steering(self, target_id: str) -> bool:
        """True when the target's steering vectors are loaded."""
        return target_id in self._steering

    def has_lora(self, target_id: str) -> bool:
        """True when the target's adapter is loaded."""
        return target_id in self._lora

    def effect(self, plan: Plan) -> tuple[RowEffect | None, bool]:
        """The row effect a plan asks for, and whether ECO must stand in for a missing part."""
        with self._lock:
            steer: dict[int, torch.Tensor] = {}
            missing = False
            for ref in plan.steer:
                vectors = self._steering.get(ref.target_id)
                if vectors is None:
                    missing = True
                    continue
                for layer, v in vectors.scaled(ref.strength, self.device, self.dtype).items():
                    steer[layer] = steer[layer] + v if layer in steer else v
            lora = None
            if plan.lora is not None:
                lora = self._lora.get(plan.lora.target_id)
                missing = missing or lora is None
        if not steer and lora is None:
            return None, missing
        scale = plan.lora.scale if plan.lora is not None else 1.0
        return RowEffect(steer=steer, lora=lora, lora_scale=scale), missing
