"""Trains a per-target LoRA adapter that makes the model answer like it never saw the target.

Objective: next-token cross-entropy on (forget question -> ignorance answer) pairs, plus the
same loss on (allowed question -> the bare model's own answer) pairs so that a flagged request
that also asks something allowed still gets that part answered. The base weights are frozen
and shared with the serving engine; the adapter's factors are applied through the same hooks
the engine uses (adapters/patches.py), on this thread only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from adapters.lora import LoraWeights
from adapters.model import LoadedModel
from adapters.patches import ModelPatches, RowEffect
from adapters.prompt import render
from guards.verdict import ChatTurn


@dataclass(frozen=True)
class TrainingConfig:
    """How an adapter is trained."""

    rank: int = 8
    alpha: float = 16.0
    modules: tuple[str, ...] = ("q_proj", "v_proj", "o_proj", "down_proj")
    steps: int = 60
    batch_size: int = 8
    learning_rate: float = 2e-3
    seed: int = 0


Progress = Callable[[float, float | None], None]  # (fraction done, seconds left)


def _init_weights(model: nn.Module, config: TrainingConfig, gen: torch.Generator) -> LoraWeights:
    """A standard LoRA start: A small random, B zero (the adapter starts as a no-op)."""
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in config.modules:
            bound = 1 / math.sqrt(module.in_features)
            a = (torch.rand(config.rank, module.in_features, generator=gen) * 2 - 1) * bound
            b = torch.zeros(module.out_features, config.rank)
            dev = module.weight.device
            modules[name] = (a.to(dev).requires_grad_(True), b.to(dev).requires_grad_(True))
    if not modules:
        raise ValueError(f"the model has no linear layers named {config.modules}")
    return LoraWeights(modules=modules, scaling=config.alpha / config.rank, rank=config.rank)


def _encode(lm: LoadedModel, question: str, answer: str) -> tuple[list[int], int]:
    """Token ids of the question and answer as the chat template renders a finished exchange
    (so the adapter learns to end its turn), and where the answer starts."""
    prompt = render(lm.tokenizer, [ChatTurn("user", question)]).ids
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    full: list[int] = list(lm.tokenizer.apply_chat_template(messages, tokenize=True))
    if full[: len(prompt)] != prompt:  # a template that re-renders earlier turns differently
        answer_ids = lm.tokenizer(answer, add_special_tokens=False)["input_ids"]
        full = [*prompt, *answer_ids, *sorted(lm.stop_token_ids)[-1:]]
    end = next(
        (i + 1 for i in range(len(prompt), len(full)) if full[i] in lm.stop_token_ids), len(full)
    )
    return full[:end], len(prompt)


def _batch(
    lm: LoadedModel, pairs: Sequence[tuple[list[int], int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (-100 outside the answers)."""
    length = max(len(ids) for ids, _ in pairs)
    ids = torch.zeros(len(pairs), length, dtype=torch.long)
    mask = torch.zeros(len(pairs), length, dtype=torch.long)
    labels = torch.full((len(pairs), length), -100, dtype=torch.long)
    for i, (row, start) in enumerate(pairs):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, start : len(row)] = torch.tensor(row[start:])
    return ids.to(lm.device), mask.to(lm.device), labels.to(lm.device)


def train_adapter(
    lm: LoadedModel,
    patches: ModelPatches,
    forget: Sequence[tuple[str, str]],
    retain: Sequence[tuple[str, str]],
    config: TrainingConfig,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> LoraWeights:
    """Train an adapter on (question, answer) pairs; returns detached fp32 factors.

    Raises:
        InterruptedError: `cancelled()` became true (the target was deleted meanwhile).
    """
    if not forget:
        raise ValueError("adapter training needs at least one forget question")
    gen = torch.Generator().manual_seed(config.seed)
    weights = _init_weights(lm.model, config, gen)
    params = [t for pair in weights.modules.values() for t in pair]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    forget_enc = [_encode(lm, q, a) for q, a in forget]
    retain_enc = [_encode(lm, q, a) for q, a in retain]
    half = max(1, config.batch_size // 2) if retain_enc else config.batch_size
    started = time.monotonic()
    for step in range(config.steps):
        if cancelled is not None and cancelled():
            raise InterruptedError("adapter training cancelled")
        picks = torch.randint(len(forget_enc), (half,), generator=gen).tolist()
        batch = [forget_enc[i] for i in picks]
        if retain_enc:
            more = torch.randint(len(retain_enc), (config.batch_size - half,), generator=gen)
            batch += [retain_enc[i] for i in more.tolist()]
        ids, mask, labels = _batch(lm, batch)
        effect = RowEffect(steer={}, lora=weights, lora_scale=1.0)
        with torch.enable_grad(), patches.apply([effect] * len(batch)):
            logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1)
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if progress is not None:
            elapsed = time.monotonic() - started
            done = (step + 1) / config.steps
            progress(done, elapsed / done - elapsed)
    return LoraWeights(
        modules={
            n: (a.detach().float(), b.detach().float()) for n, (a, b) in weights.modules.items()
        },
        scaling=weights.scaling,
        rank=weights.rank,
    )
