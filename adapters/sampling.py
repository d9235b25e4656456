"""Per-row decoding: sampling parameters, token choice, incremental detokenisation with stops."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class SamplingParams:
    """Per-row decoding parameters."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        """Temperature 0 means argmax decoding."""
        return self.temperature <= 1e-5


def row_generator(sampling: SamplingParams, row: int) -> torch.Generator:
    """The random generator of one row: seeded rows are reproducible whatever their batch."""
    gen = torch.Generator(device="cpu")
    if sampling.seed is not None:
        gen.manual_seed(sampling.seed + row)
    else:
        gen.seed()
    return gen


def choose_token(logits: torch.Tensor, sampling: SamplingParams, gen: torch.Generator) -> int:
    """Next token for one row from its `[vocab]` logits."""
    if sampling.greedy:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float().cpu() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < sampling.top_p
        keep[0] = True
        filtered = torch.zeros_like(probs)
        filtered[order[keep]] = sorted_p[keep]
        probs = filtered / filtered.sum()
    return int(torch.multinomial(probs, 1, generator=gen).item())


class RowText:
    """Incremental detokenisation plus stop-string handling for one row."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self.sent = 0  # chars of the decoded text already emitted
        self.stopped = False  # a stop string ended the row

    def push(self, token_id: int) -> str:
        """Add a token; return the text safe to emit now (sets `stopped` on a stop string)."""
        self.ids.append(token_id)
        text: str = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # incomplete UTF-8 sequence: wait for the next token
            return ""
        for s in self.stop:
            pos = text.find(s, max(0, self.sent - len(s)))
            if pos >= 0:
                out = text[self.sent : pos] if pos > self.sent else ""
                self.sent = max(self.sent, pos)
                self.stopped = True
                return out
        safe_end = max(self.sent, len(text) - self.holdback)
        out = text[self.sent : safe_end]
        self.sent = safe_end
        return out

    def flush(self) -> str:
        """Text held back for stop matching, released when the row ends otherwise."""
        if self.stopped:
            return ""
        text: str = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        out = text[self.sent :]
        self.sent = len(text)
        return out
