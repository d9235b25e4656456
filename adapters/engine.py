"""Generation engine with continuous batching and per-row plans.

One worker thread owns the model. At every step boundary it admits waiting requests into the
running batch (iteration-level scheduling, as in Orca and vLLM): a new request is prefilled on
its own, with its plan applied to its prompt embeddings, and its KV cache joins the batch
left-padded to the common length; then one decode step runs for every row at once. A row
that finishes or whose client went away leaves at the next step boundary. The event loop only
awaits events, so it keeps serving /health and admin calls while tokens are produced.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import torch

from adapters.bank import InterventionBank
from adapters.batch import KVBatch
from adapters.eco import corrupt_embeddings
from adapters.model import LoadedModel
from adapters.patches import ModelPatches, RowEffect
from adapters.prompt import RenderedPrompt
from adapters.sampling import RowText, SamplingParams, choose_token, row_generator
from guards.verdict import Plan

logger = logging.getLogger(__name__)

__all__ = [
    "Engine",
    "GenerationRequest",
    "RowFinished",
    "SamplingParams",
    "TokenDelta",
]


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
    reason: str  # "stop" | "length" | "content_filter"
    completion_tokens: int


Event = TokenDelta | RowFinished | BaseException | None


@dataclass
class _Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event]
    cancelled: threading.Event = field(default_factory=threading.Event)
    rows_left: int = 0
    outbox: list[Event] = field(default_factory=list)  # this step's events, not yet delivered

    def emit(self, event: Event) -> None:
        self.outbox.append(event)


def _deliver(batches: list[tuple[_Job, list[Event]]]) -> None:
    """Runs on the event loop: hand one step's events to their requests."""
    for job, events in batches:
        for event in events:
            job.events.put_nowait(event)


def _flush(jobs: list[_Job]) -> None:
    """Deliver every job's pending events with one wake-up per event loop per step.

    A wake-up per token would make the event loop compete with the model for the GIL
    dozens of times per step.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, list[Event]]]] = {}
    for job in jobs:
        if job.outbox:
            by_loop.setdefault(job.loop, []).append((job, job.outbox))
            job.outbox = []
    for loop, batches in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, batches)
        except RuntimeError:  # that loop is closed: its requests are gone
            pass


@dataclass
class _Row:
    job: _Job
    index: int  # choice index within the job
    text: RowText
    gen: torch.Generator
    position: int  # position id of the next token fed to the model
    effect: RowEffect | None = None  # steering / LoRA applied to this row at every step
    last_token: int = 0
    count: int = 0
    done: bool = False


class Engine:
    """Serves generation requests from one continuously batched worker thread.

    Example:
        >>> engine = Engine(load_model("bundled:smollm2-135m-instruct", cache))  # doctest: +SKIP
        >>> async for event in engine.generate(request): ...  # doctest: +SKIP
    """

    def __init__(
        self,
        loaded: LoadedModel,
        max_batch: int = 16,
        max_queue: int = 64,
        bank: InterventionBank | None = None,
    ) -> None:
        self.loaded = loaded
        self.bank = bank or InterventionBank(loaded.device, loaded.dtype)
        self.patches = ModelPatches(loaded.model)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._pending: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._running = True
        self._active_rows = 0
        self._thread = threading.Thread(target=self._worker, name="lethe-engine", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the worker after the current step."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        self._thread.join(timeout=30)

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a place in the batch."""
        return len(self._pending)

    @property
    def batch_size(self) -> int:
        """Rows being decoded now."""
        return self._active_rows

    def has_capacity(self) -> bool:
        """False when the waiting queue is full (the caller should answer 429)."""
        return len(self._pending) < self.max_queue

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta | RowFinished]:
        """Stream a request's events; leaving the iteration early cancels its rows."""
        if request.n > self.max_batch:
            raise ValueError(f"n={request.n} exceeds the batch size {self.max_batch}")
        job = _Job(request=request, loop=asyncio.get_running_loop(), events=asyncio.Queue())
        with self._cond:
            self._pending.append(job)
            self._cond.notify_all()
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

    async def text_of(self, request: GenerationRequest) -> str:
        """The whole text of a one-row request (calibration, expansion, classification)."""
        text = ""
        async for event in self.generate(request):
            if isinstance(event, TokenDelta):
                text += event.text
        return text

    # --- worker side ------------------------------------------------------------------
    def _admit(self, rows: list[_Row]) -> list[_Job]:
        """Jobs that fit into the batch now; blocks while there is nothing to do."""
        with self._cond:
            while self._running and not rows and not self._pending:
                self._cond.wait()
            admitted: list[_Job] = []
            used = len(rows)
            while self._pending and used + self._pending[0].request.n <= self.max_batch:
                job = self._pending.popleft()
                if job.cancelled.is_set():
                    continue
                admitted.append(job)
                used += job.request.n
            return admitted

    def _worker(self) -> None:
        rows: list[_Row] = []
        batch = KVBatch()
        while self._running:
            jobs = self._admit(rows)
            touched = list({id(j): j for j in [*(r.job for r in rows), *jobs]}.values())
            try:
                with torch.inference_mode():
                    batch.join(self._prefill_each(jobs, rows))
                    rows = self._drop_finished(rows, batch)
                    if rows:
                        self._decode(rows, batch)
                        rows = self._drop_finished(rows, batch)
            except Exception as exc:  # surfaced to every affected request; the worker lives on
                logger.exception("generation step failed")
                affected = {id(j): j for j in [*(r.job for r in rows), *jobs]}
                for job in affected.values():
                    job.emit(exc)
                rows, batch = [], KVBatch()
            _flush(touched)
            self._active_rows = len(rows)

    def _prefill_embeds(self, request: GenerationRequest, corrupt: bool) -> torch.Tensor:
        """Prompt embeddings `[1, seq, hidden]`, corrupted on the plan's spans for ECO rows."""
        lm = self.loaded
        ids = torch.tensor([request.prompt.ids], dtype=torch.long, device=lm.device)
        embeds = lm.model.get_input_embeddings()(ids)[0]  # [seq, hidden]
        if corrupt:
            positions = request.prompt.token_positions(request.plan.spans)
            embeds = corrupt_embeddings(
                embeds, positions, request.plan.eco_sigma, request.plan.noise_seed
            )
        out: torch.Tensor = embeds.unsqueeze(0)
        return out

    def _prefill_each(self, jobs: list[_Job], rows: list[_Row]) -> list[tuple[Any, torch.Tensor]]:
        """Prefill every admitted job; one that fails gets its error alone and leaves no row,
        so a bad request cannot fail the requests that share its step."""
        prefilled: list[tuple[Any, torch.Tensor]] = []
        for job in jobs:
            try:
                prefilled.append(self._prefill(job, rows))
            except Exception as exc:
                logger.exception("prefill failed for one request")
                job.emit(exc)
        return prefilled

    def _prefill(self, job: _Job, rows: list[_Row]) -> tuple[Any, torch.Tensor]:
        """Run a new request's prompt alone; add its rows; return its cache and mask.

        Its rows join `rows` only once all of them are built.
        """
        lm, req = self.loaded, job.request
        effect, missing = self.bank.effect(req.plan)
        embeds = self._prefill_embeds(req, corrupt=req.plan.corrupts or missing)
        with self.patches.apply([effect]):
            out = lm.model(inputs_embeds=embeds, use_cache=True)
        cache = out.past_key_values
        logits = out.logits[0, -1]  # [vocab], shared by the request's rows
        if req.n > 1:
            cache.batch_repeat_interleave(req.n)
        length = len(req.prompt.ids)
        job.rows_left = req.n
        new_rows: list[_Row] = []
        for i in range(req.n):
            row = _Row(
                job=job,
                index=i,
                text=RowText(lm.tokenizer, req.sampling.stop),
                gen=row_generator(req.sampling, i),
                position=length,
                effect=effect,
            )
            new_rows.append(row)
            self._accept(row, choose_token(logits, req.sampling, row.gen))
        rows.extend(new_rows)
        return cache, torch.ones((req.n, length), dtype=torch.long, device=lm.device)

    def _decode(self, rows: list[_Row], batch: KVBatch) -> None:
        """One token for every row of the batch."""
        lm = self.loaded
        ids = torch.tensor([[r.last_token] for r in rows], dtype=torch.long, device=lm.device)
        positions = torch.tensor([[r.position] for r in rows], dtype=torch.long, device=lm.device)
        with self.patches.apply([r.effect for r in rows]):
            out = lm.model(
                input_ids=ids,
                attention_mask=batch.extend_mask(),
                position_ids=positions,
                past_key_values=batch.cache,
                use_cache=True,
            )
        batch.cache = out.past_key_values
        logits = out.logits[:, -1, :]  # [batch, vocab]
        greedy = logits.argmax(dim=-1).tolist()  # one call for every greedy row
        for i, row in enumerate(rows):
            row.position += 1
            sampling = row.job.request.sampling
            token = greedy[i] if sampling.greedy else choose_token(logits[i], sampling, row.gen)
            self._accept(row, token)

    def _accept(self, row: _Row, token: int) -> None:
        """Record a row's new token: emit its text, end the row when a limit is reached."""
        job, lm = row.job, self.loaded
        sampling = job.request.sampling
        row.last_token = token
        row.count += 1
        reason: str | None = None
        if token in lm.stop_token_ids:
            reason = "stop"
        else:
            delta = row.text.push(token)
            if delta:
                job.emit(TokenDelta(row.index, delta))
            if row.text.stopped:
                reason = "stop"
            elif (
                row.count >= sampling.max_tokens
                or row.position + 1 >= lm.context_length
                or (job.request.deadline is not None and time.monotonic() > job.request.deadline)
            ):
                reason = "length"
        if reason is not None:
            tail = row.text.flush()
            if tail:
                job.emit(TokenDelta(row.index, tail))
            self._finish(row, reason)

    @staticmethod
    def _finish(row: _Row, reason: str) -> None:
        row.done = True
        row.job.emit(RowFinished(row.index, reason, completion_tokens=row.count))
        row.job.rows_left -= 1
        if row.job.rows_left == 0:
            row.job.emit(None)

    @staticmethod
    def _drop_finished(rows: list[_Row], batch: KVBatch) -> list[_Row]:
        """Remove finished rows and rows whose client went away."""
        for row in rows:
            if not row.done and row.job.cancelled.is_set():
                row.done = True
        keep = [i for i, row in enumerate(rows) if not row.done]
        if len(keep) == len(rows):
            return rows
        batch.keep(keep)
        return [rows[i] for i in keep]
