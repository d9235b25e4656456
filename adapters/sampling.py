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
        # torch takes a seed modulo 2**64 but raises outside [-2**63, 2**64): masking keeps
        # every stream it accepts and makes any int a seed, so no row's seed (plus its row
        # index) can fail the batch step it shares with other requests.
        gen.manual_seed((sampling.seed + row) & 0xFFFF_FFFF_FFFF_FFFF)
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
    """Incremental detokenisation plus stop-string handling for one row.

    Decodes only a short window of recent tokens per step (prefix/read offsets, as TGI does)
    instead of the whole sequence, so a step costs the same at token 10 and token 1,000.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""  # decoded so far
        self.sent = 0  # chars of `text` already emitted
        self.stopped = False  # a stop string ended the row
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        out: str = self.tokenizer.decode(ids, skip_special_tokens=True)
        return out

    def push(self, token_id: int) -> str:
        """Add a token; return the text safe to emit now (sets `stopped` on a stop string)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # incomplete UTF-8 sequence or nothing printable yet
        self.text += after[len(before) :]
        self._prefix, self._read = self._read, len(self.ids)
        for s in self.stop:
            pos = self.text.find(s, max(0, self.sent - len(s)))
            if pos >= 0:
                out = self.text[self.sent : pos] if pos > self.sent else ""
                self.sent = max(self.sent, pos)
                self.stopped = True
                return out
        safe_end = max(self.sent, len(self.text) - self.holdback)
        out = self.text[self.sent : safe_end]
        self.sent = safe_end
        return out

    def flush(self) -> str:
        """Text held back for stop matching, released when the row ends otherwise."""
        if self.stopped:
            return ""
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out
