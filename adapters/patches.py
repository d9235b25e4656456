"""Per-row changes to the model's computation inside one batched forward pass.

Steering vectors are added to the residual stream after chosen decoder layers, and LoRA deltas
to the outputs of chosen linear layers, each only for the rows whose plan asks for them. The
hooks read the rows' effects from a thread-local set around each forward, so a forward run by
another thread (calibration, adapter training) never sees the engine's rows, and a forward
with no effects runs the bare model bit for bit: rows without an effect are never written.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adapters.lora import LoraWeights


@dataclass(frozen=True)
class RowEffect:
    """What one row gets: steering per layer (already scaled) and at most one LoRA adapter."""

    steer: dict[int, torch.Tensor]  # decoder layer index -> vector [hidden] added to its output
    lora: LoraWeights | None = None
    lora_scale: float = 1.0

    @property
    def empty(self) -> bool:
        """True when the row runs the bare model."""
        return not self.steer and self.lora is None


@dataclass
class _Prepared:
    """One forward's effects, grouped for the hooks: index tensors and stacked deltas."""

    steer: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> (rows [k], vectors [k, 1, H])
    adapters: tuple[LoraWeights, ...]  # the distinct adapters of this forward
    coef: torch.Tensor | None  # [batch, adapters]: scale x scaling where a row uses one, else 0


@dataclass(frozen=True)
class _Stacked:
    """One layer's factors of several adapters side by side (multi-LoRA in two matmuls)."""

    a: torch.Tensor  # [sum of ranks, in]
    b: torch.Tensor  # [out, sum of ranks]
    owner: torch.Tensor  # [sum of ranks]: which adapter each rank column belongs to
    adapters: tuple[LoraWeights, ...]  # kept alive so their ids stay unique in the cache key


def decoder_layers(model: Any) -> nn.ModuleList:
    """The model's stack of decoder layers (Llama, Mistral, Qwen, Gemma, GPT-2 style)."""
    n = int(getattr(model.config, "num_hidden_layers", 0) or getattr(model.config, "n_layer", 0))
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and n > 0:
            return module
    raise ValueError("cannot find the decoder layers of this model")


class ModelPatches:
    """Installs the steering and LoRA hooks on a model and applies per-row effects.

    Example:
        >>> patches = ModelPatches(model)  # doctest: +SKIP
        >>> with patches.apply([None, RowEffect(steer={5: v})]):  # doctest: +SKIP
        ...     out = model(input_ids=ids)
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.layers = decoder_layers(model)
        self._local = threading.local()
        self._lora_hooked: set[str] = set()
        self._stack_cache: dict[tuple[str, tuple[int, ...]], _Stacked | None] = {}
        self._hook_lock = threading.Lock()
        self._modules = dict(model.named_modules())
        for index, layer in enumerate(self.layers):
            layer.register_forward_hook(self._steer_hook(index))

    @property
    def num_layers(self) -> int:
        """Decoder layers in the model."""
        return len(self.layers)

    def _current(self) -> _Prepared | None:
        prepared: _Prepared | None = getattr(self._local, "prepared", None)
        return prepared

    def _steer_hook(self, index: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            captured: dict[int, torch.Tensor] | None = getattr(self._local, "captured", None)
            if captured is not None:
                hidden = output[0] if isinstance(output, tuple) else output
                captured[index] = hidden[:, -1].detach().float().clone()
            prepared = self._current()
            if prepared is None or index not in prepared.steer:
                return None
            rows, vectors = prepared.steer[index]
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden.index_add(
                0, rows, vectors.to(hidden.dtype).expand(-1, hidden.shape[1], -1)
            )
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook

    def _stacked(self, name: str, adapters: tuple[LoraWeights, ...]) -> _Stacked | None:
        """The adapters' factors for one layer, concatenated along the rank (cached while the
        set of adapters in the batch stays the same; never for weights being trained)."""
        trainable = any(a.modules[name][0].requires_grad for a in adapters if name in a.modules)
        key = (name, tuple(id(a) for a in adapters))
        if not trainable and key in self._stack_cache:
            return self._stack_cache[key]
        parts = [(i, w.modules[name]) for i, w in enumerate(adapters) if name in w.modules]
        stacked = None
        if parts:
            device = parts[0][1][0].device
            stacked = _Stacked(
                a=torch.cat([a for _, (a, _) in parts], dim=0),
                b=torch.cat([b for _, (_, b) in parts], dim=1),
                owner=torch.tensor(
                    [i for i, (a, _) in parts for _ in range(a.shape[0])], device=device
                ),
                adapters=adapters,
            )
        if not trainable:
            if len(self._stack_cache) > 4096:  # adapter sets churn: start over
                self._stack_cache.clear()
            self._stack_cache[key] = stacked
        return stacked

    def _lora_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> Any:
            prepared = self._current()
            if prepared is None or prepared.coef is None:
                return None
            stacked = self._stacked(name, prepared.adapters)
            if stacked is None:
                return None
            # Every row through the same two small matmuls; a row's coefficients are zero on
            # the rank columns of adapters it does not use (all of them for unflagged rows).
            coef = prepared.coef.index_select(1, stacked.owner).to(stacked.a.dtype)
            coef = coef.view(coef.shape[0], *([1] * (output.dim() - 2)), coef.shape[1])
            delta = ((args[0].to(stacked.a.dtype) @ stacked.a.T) * coef) @ stacked.b.T
            return output + delta.to(output.dtype)

        return hook

    def ensure_lora_hooks(self, weights: LoraWeights) -> None:
        """Hook the linear layers an adapter touches (once per layer, for any adapter)."""
        with self._hook_lock:
            for name in weights.modules:
                if name in self._lora_hooked:
                    continue
                module = self._modules.get(name)
                if not isinstance(module, nn.Linear):
                    raise ValueError(f"module {name!r} is not a linear layer of this model")
                module.register_forward_hook(self._lora_hook(name))
                self._lora_hooked.add(name)

    def _prepare(self, effects: Sequence[RowEffect | None], device: torch.device) -> _Prepared:
        steer: dict[int, tuple[list[int], list[torch.Tensor]]] = {}
        adapters: dict[int, LoraWeights] = {}
        for row, effect in enumerate(effects):
            if effect is None:
                continue
            for layer, vector in effect.steer.items():
                rows, vectors = steer.setdefault(layer, ([], []))
                rows.append(row)
                vectors.append(vector)
            if effect.lora is not None and id(effect.lora) not in adapters:
                self.ensure_lora_hooks(effect.lora)
                adapters[id(effect.lora)] = effect.lora
        order = {key: i for i, key in enumerate(adapters)}
        coef = None
        if adapters:
            coef = torch.zeros(len(effects), len(adapters), device=device)
            for row, effect in enumerate(effects):
                if effect is not None and effect.lora is not None:
                    column = order[id(effect.lora)]
                    coef[row, column] = effect.lora_scale * effect.lora.scaling

        def index(rows: list[int]) -> torch.Tensor:
            return torch.tensor(rows, dtype=torch.long, device=device)

        return _Prepared(
            steer={
                layer: (index(rows), torch.stack(vectors).unsqueeze(1).to(device))
                for layer, (rows, vectors) in steer.items()
            },
            adapters=tuple(adapters.values()),
            coef=coef,
        )

    @contextmanager
    def capture(self) -> Iterator[dict[int, torch.Tensor]]:
        """Within the block, forwards on this thread record each decoder layer's output at the
        last position (`[batch, hidden]` per layer index). Thread-local, unlike
        `output_hidden_states`, whose recording would also catch the engine's concurrent
        forwards."""
        captured: dict[int, torch.Tensor] = {}
        self._local.captured = captured
        try:
            yield captured
        finally:
            self._local.captured = None

    @contextmanager
    def apply(
        self, effects: Sequence[RowEffect | None], device: torch.device | None = None
    ) -> Iterator[None]:
        """Within the block, forwards on this thread apply `effects[i]` to batch row i."""
        if all(e is None or e.empty for e in effects):
            yield
            return
        dev = device or next(self.model.parameters()).device
        self._local.prepared = self._prepare(effects, dev)
        try:
            yield
        finally:
            self._local.prepared = None
