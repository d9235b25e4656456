"""Generation engine: runs a request's rows (one per choice) with their per-row plans.

The model runs in one worker thread, so the event loop keeps serving /health and admin calls
while tokens are produced. Each row has its own plan, sampling parameters and stop rules; a
plan of `none` leaves the model's computation untouched.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import torch

from adapters.eco import corrupt_embeddings
from adapters.model import LoadedModel
from adapters.prompt import RenderedPrompt
from guards.verdict import Plan

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class GenerationRequest:
    """One HTTP request's worth of rows sharing a prompt and a plan."""

    prompt: RenderedPrompt
    plan: Plan
    sampling: SamplingParams
    n: int = 1
    deadline: float | None = None  # time.monotonic() after which rows end


@dataclass(frozen=True)
class TokenDelta:
    """New text for one row."""

    row: int
    text: str


@dataclass(frozen=True)
class RowFinished:
    """A row ended."""

    row: int
    reason: str  # "stop" | "length"
    completion_tokens: int


@dataclass
class _Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[TokenDelta | RowFinished | BaseException | None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: TokenDelta | RowFinished | BaseException | None) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class _RowText:
    """Incremental detokenisation plus stop-string handling for one row."""

    def __init__(self, tokenizer: object, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self.sent = 0  # chars of the decoded text already emitted
        self.done = False

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a token; returns (text safe to emit now, hit a stop string)."""
        self.ids.append(token_id)
        text: str = self.tokenizer.decode(self.ids, skip_special_tokens=True)  # type: ignore[attr-defined]
        if text.endswith("\ufffd"):  # incomplete UTF-8 sequence: wait for the next token
            return "", False
        for s in self.stop:
            pos = text.find(s, max(0, self.sent - len(s)))
            if pos >= 0:
                out = text[self.sent : pos] if pos > self.sent else ""
                self.sent = max(self.sent, pos)
                return out, True
        safe_end = max(self.sent, len(text) - self.holdback)
        out = text[self.sent : safe_end]
        self.sent = safe_end
        return out, False

    def flush(self) -> str:
        """Text held back for stop matching, released at the end of the row."""
        text: str = self.tokenizer.decode(self.ids, skip_special_tokens=True)  # type: ignore[attr-defined]
        out = text[self.sent :]
        self.sent = len(text)
        return out


class Engine:
    """Runs generation requests on one worker thread, streaming tokens back to the event loop.

    Example:
        >>> engine = Engine(load_model("bundled:smollm2-135m-instruct", cache))  # doctest: +SKIP
        >>> async for event in engine.generate(request): ...  # doctest: +SKIP
    """

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._worker, name="lethe-engine", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the worker after the running job."""
        self._jobs.put(None)
        self._thread.join(timeout=30)

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for the worker."""
        return self._jobs.qsize()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta | RowFinished]:
        """Stream a request's events; leaving the iteration early cancels its rows."""
        loop = asyncio.get_running_loop()
        job = _Job(request=request, loop=loop, events=asyncio.Queue())
        self._jobs.put(job)
        try:
            while True:
                event = await job.events.get()
                if event is None:
                    return
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            job.cancelled.set()

    # --- worker side ------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.cancelled.is_set():
                continue
            try:
                self._run(job)
                job.emit(None)
            except Exception as exc:  # surfaced to the awaiting request, never kills the worker
                logger.exception("generation failed")
                job.emit(exc)

    def _prefill_embeds(self, request: GenerationRequest) -> torch.Tensor:
        """Input embeddings `[n, seq, hidden]`, corrupted per the plan for ECO rows."""
        lm = self.loaded
        ids = torch.tensor([request.prompt.ids], dtype=torch.long, device=lm.device)
        embeds = lm.model.get_input_embeddings()(ids)[0]  # [seq, hidden]
        if request.plan.action == "eco":
            positions = request.prompt.token_positions(request.plan.spans)
            embeds = corrupt_embeddings(
                embeds, positions, request.plan.eco_sigma, request.plan.noise_seed
            )
        out: torch.Tensor = embeds.unsqueeze(0).expand(request.n, -1, -1).contiguous()
        return out

    @staticmethod
    def _generators(sampling: SamplingParams, n: int) -> list[torch.Generator]:
        gens = []
        for row in range(n):
            gen = torch.Generator(device="cpu")
            if sampling.seed is not None:
                gen.manual_seed(sampling.seed + row)
            else:
                gen.seed()
            gens.append(gen)
        return gens

    @staticmethod
    def _choose(logits: torch.Tensor, sampling: SamplingParams, gen: torch.Generator) -> int:
        """Next token for one row from `[vocab]` logits."""
        if sampling.greedy:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits.float() / sampling.temperature, dim=-1).cpu()
        if sampling.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < sampling.top_p
            keep[0] = True
            filtered = torch.zeros_like(probs)
            filtered[order[keep]] = sorted_p[keep]
            probs = filtered / filtered.sum()
        return int(torch.multinomial(probs, 1, generator=gen).item())

    @torch.inference_mode()
    def _run(self, job: _Job) -> None:
        lm = self.loaded
        req = job.request
        n = req.n
        sampling = req.sampling
        texts = [_RowText(lm.tokenizer, sampling.stop) for _ in range(n)]
        gens = self._generators(sampling, n)
        finished = [False] * n
        prompt_len = len(req.prompt.ids)

        counts = [0] * n
        out = lm.model(inputs_embeds=self._prefill_embeds(req), use_cache=True)
        past = out.past_key_values
        logits = out.logits[:, -1, :]  # [n, vocab]
        while True:
            next_ids: list[int] = []
            for row in range(n):
                if finished[row]:
                    next_ids.append(0)
                    continue
                token = self._choose(logits[row], sampling, gens[row])
                next_ids.append(token)
                counts[row] += 1
                reason: str | None = None
                if token in lm.stop_token_ids:
                    reason = "stop"
                else:
                    delta, hit_stop = texts[row].push(token)
                    if delta:
                        job.emit(TokenDelta(row, delta))
                    if hit_stop:
                        reason = "stop"
                        texts[row].done = True
                if reason is None and (
                    counts[row] >= sampling.max_tokens
                    or prompt_len + counts[row] >= lm.context_length
                    or (req.deadline is not None and time.monotonic() > req.deadline)
                ):
                    reason = "length"
                if reason is not None:
                    if not texts[row].done:  # release text held back for stop matching
                        tail = texts[row].flush()
                        if tail:
                            job.emit(TokenDelta(row, tail))
                    finished[row] = True
                    job.emit(RowFinished(row, reason, completion_tokens=counts[row]))
            if all(finished) or job.cancelled.is_set():
                return
            ids = torch.tensor(next_ids, dtype=torch.long, device=lm.device).unsqueeze(1)
            out = lm.model(input_ids=ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[:, -1, :]
