"""Steering vectors: where the model's residual stream goes when it does not know an entity.

At registration, the mean residual activation (at the last prompt token, after each decoder
layer) on the target's own questions is subtracted from the mean on the same questions asked
about fictitious entities. Adding that difference, scaled, over a band of layers pushes a
flagged row toward the model's state for something it never learned (difference-of-means
steering, as in ActAdd / LUNAR). Forward passes only; deterministic for a given model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from adapters.model import LoadedModel
from adapters.patches import ModelPatches
from adapters.prompt import render
from guards.verdict import ChatTurn


@dataclass(frozen=True)
class SteeringVectors:
    """Unit-strength steering per decoder layer of the band: `[len(layers), hidden]`."""

    layers: tuple[int, ...]
    vectors: torch.Tensor

    def scaled(
        self, strength: float, device: torch.device, dtype: torch.dtype
    ) -> dict[int, torch.Tensor]:
        """Per layer, the vector to add at `strength`."""
        vectors = (self.vectors * strength).to(device, dtype)
        return {layer: vectors[i] for i, layer in enumerate(self.layers)}

    def to_bytes(self) -> bytes:
        """safetensors with the layer list in the metadata."""
        return save_safetensors(
            {"vectors": self.vectors.float().contiguous().cpu()},
            metadata={"layers": json.dumps(list(self.layers))},
        )

    @staticmethod
    def from_bytes(data: bytes) -> SteeringVectors:
        """Inverse of `to_bytes`."""
        size = int.from_bytes(data[:8], "little")
        layers = json.loads(json.loads(data[8 : 8 + size])["__metadata__"]["layers"])
        return SteeringVectors(
            layers=tuple(int(x) for x in layers), vectors=load_safetensors(data)["vectors"]
        )


def band(num_layers: int, start: float, end: float) -> tuple[int, ...]:
    """Decoder layers from fraction `start` to fraction `end` of the depth."""
    first = max(0, min(num_layers - 1, int(round(start * num_layers))))
    last = max(first + 1, min(num_layers, int(round(end * num_layers))))
    return tuple(range(first, last))


def _last_token_states(
    lm: LoadedModel, patches: ModelPatches, questions: Sequence[str], layers: tuple[int, ...]
) -> torch.Tensor:
    """Mean over questions of each band layer's output at the last prompt token:
    `[len(layers), hidden]`."""
    total = torch.zeros(len(layers), lm.model.config.hidden_size)
    for question in questions:
        ids = torch.tensor(
            [render(lm.tokenizer, [ChatTurn("user", question)]).ids], device=lm.device
        )
        with patches.capture() as captured:
            lm.model(input_ids=ids, use_cache=False)
        total += torch.stack([captured[layer][0].cpu() for layer in layers])
    return total / len(questions)


def compute_steering(
    lm: LoadedModel,
    patches: ModelPatches,
    target_questions: Sequence[str],
    contrast_questions: Sequence[str],
    layers: tuple[int, ...],
) -> SteeringVectors:
    """Difference of means (contrast - target) per layer of the band, from forward passes.

    Safe to run beside the engine: activations are captured on this thread only.
    """
    if not target_questions or not contrast_questions:
        raise ValueError("steering needs target and contrast questions")
    with torch.inference_mode():
        contrast = _last_token_states(lm, patches, contrast_questions, layers)
        target = _last_token_states(lm, patches, target_questions, layers)
    return SteeringVectors(layers=layers, vectors=contrast - target)
