"""Chat service: validate -> detect -> plan -> generate -> redact, for JSON and SSE responses."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio

from adapters.engine import Engine, GenerationRequest, RowFinished, SamplingParams, TokenDelta
from adapters.prompt import PromptError, RenderedPrompt, render
from app.chat_request import choice_count, sampling_params
from app.errors import BadRequest, Overloaded
from app.interventions import (
    Intervention,
    InterventionLog,
    InterventionRecorder,
    InterventionStage,
)
from app.logging_setup import current_request_id
from app.metrics import GatewayMetrics
from app.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    ChunkDelta,
    ResponseMessage,
    Usage,
    content_text,
    model_dump_sse,
)
from app.settings import Settings
from guards.detector import Detector
from guards.output_guard import Redactor, withheld_names
from guards.registry import Registry
from guards.verdict import ChatTurn, Plan, Verdict, noise_seed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedChat:
    """A validated request with its verdict and the rows to run."""

    id: str
    request_id: str  # the X-Request-ID of the HTTP request
    created: int
    turns: list[ChatTurn]
    prompt: RenderedPrompt
    plan: Plan
    sampling: SamplingParams
    n: int
    stream: bool
    include_usage: bool
    redact: tuple[str, ...]
    # Names of the targets this request was intervened for that the user did not write; the
    # answer audit adds to it when it re-runs a request.
    withheld: list[str] = field(default_factory=list)


def describe(verdict: Verdict) -> str:
    """Log form of a verdict: target ids, sources and scores (no text)."""
    return ", ".join(f"{m.target_id}:{m.source}:{m.score:.2f}" for m in verdict.matches)


def to_turns(request: ChatCompletionRequest) -> list[ChatTurn]:
    """Conversation turns; `developer` is treated as `system`."""
    turns = []
    for msg in request.messages:
        role = "system" if msg.role == "developer" else msg.role
        turns.append(ChatTurn(role=role, content=content_text(msg.content)))
    return turns


class ChatService:
    """Serves chat completions through the detector, the engine and the output guard."""

    def __init__(
        self,
        engine: Engine,
        detector: Detector,
        registry: Registry,
        settings: Settings,
        metrics: GatewayMetrics | None = None,
        interventions: InterventionRecorder | None = None,
    ) -> None:
        self.engine = engine
        self.detector = detector
        self.registry = registry
        self.settings = settings
        self.metrics = metrics or GatewayMetrics()
        self.interventions: InterventionRecorder = interventions or InterventionLog(
            settings.intervention_log_size
        )
        self.model_name = engine.loaded.name
        self._max_n = min(settings.max_n, engine.max_batch)

    async def prepare(self, req: ChatCompletionRequest) -> PreparedChat:
        """Validate a request, inspect it and decide its plan."""
        n = choice_count(req, self.model_name, self.settings.max_messages, self._max_n)
        turns = to_turns(req)
        if sum(len(t.content) for t in turns) > self.settings.max_prompt_chars:
            raise BadRequest(
                f"the conversation exceeds {self.settings.max_prompt_chars} characters",
                param="messages",
            )
        try:
            prompt = render(self.engine.loaded.tokenizer, turns)
        except PromptError as exc:
            raise BadRequest(str(exc), param="messages") from exc
        sampling = sampling_params(
            req,
            len(prompt.ids),
            self.engine.loaded.context_length,
            self.settings.max_tokens_default,
        )
        if not self.engine.has_capacity():
            raise Overloaded("the gateway is at capacity; retry shortly")
        started = time.perf_counter()
        verdict: Verdict = await anyio.to_thread.run_sync(self.detector.inspect, turns)
        self.metrics.detector_latency.observe(time.perf_counter() - started)
        plan = Plan.from_verdict(verdict, noise_seed=noise_seed(turns)).covering_follow_up(turns)
        self.metrics.chat_requests.labels(action=plan.action).inc()
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        request_id = current_request_id() or completion_id
        # Ids, scores and the action only: never prompt text at INFO.
        logger.info(
            "request %s: %d turns, %d prompt tokens, action=%s, matches=[%s]",
            completion_id,
            len(turns),
            len(prompt.ids),
            plan.action,
            describe(verdict),
        )
        chat = PreparedChat(
            id=completion_id,
            request_id=request_id,
            created=int(time.time()),
            turns=turns,
            prompt=prompt,
            plan=plan,
            sampling=sampling,
            n=n,
            stream=bool(req.stream),
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
            redact=self.registry.redact_strings(),
        )
        if plan.action != "none":
            self._withhold(chat, verdict)
            self._record(chat, InterventionStage.PROMPT, plan.action, verdict)
        return chat

    def _withhold(self, chat: PreparedChat, verdict: Verdict) -> None:
        targets = (t for m in verdict.matches if (t := self.registry.get(m.target_id)))
        chat.withheld.extend(
            n for n in withheld_names(targets, chat.turns) if n not in chat.withheld
        )

    # --- generation ---------------------------------------------------------------
    async def _events(
        self, chat: PreparedChat, plan: Plan
    ) -> AsyncIterator[TokenDelta | RowFinished]:
        if plan.action == "refuse":
            message = self.settings.refusal_message
            tokens = len(self.engine.loaded.tokenizer.encode(message, add_special_tokens=False))
            for row in range(chat.n):
                yield TokenDelta(row, message)
                yield RowFinished(row, "stop", tokens)
            return
        request = GenerationRequest(
            prompt=chat.prompt,
            plan=plan,
            sampling=chat.sampling,
            n=chat.n,
            deadline=time.monotonic() + self.settings.request_timeout_s,
        )
        async for event in self.engine.generate(request):
            yield event

    def _audits(self, chat: PreparedChat) -> bool:
        """Whether this request's answers are audited (unflagged rows, audit enabled)."""
        return chat.plan.action == "none" and self.settings.answer_audit and len(self.registry) > 0

    def _audit(self, texts: list[str]) -> Verdict:
        matches = tuple(m for text in texts for m in self.detector.inspect_answer(text).matches)
        return Verdict(matches=matches)

    def _replan(self, chat: PreparedChat, verdict: Verdict) -> Plan:
        logger.info(
            "request %s: answer audit matches=[%s] -> re-run with intervention",
            chat.id,
            describe(verdict),
        )
        plan = Plan.for_whole_turns(verdict, chat.turns, noise_seed(chat.turns))
        self._withhold(chat, verdict)
        self.metrics.answer_audit_reruns.labels(action=plan.action).inc()
        self._record(chat, InterventionStage.ANSWER, plan.action, verdict)
        return plan

    def _record(
        self, chat: PreparedChat, stage: InterventionStage, action: str, verdict: Verdict
    ) -> None:
        self.interventions.record(
            Intervention.of(
                chat.request_id, chat.id, stage, action, (m.target_id for m in verdict.matches)
            )
        )

    def _redactors(self, chat: PreparedChat) -> list[Redactor]:
        """Per row: never-emit strings, and the withheld names (known once the plan is final)."""
        placeholder = self.settings.redaction_placeholder
        return [Redactor(chat.redact, placeholder, chat.withheld) for _ in range(chat.n)]

    async def _collect(self, chat: PreparedChat, plan: Plan) -> tuple[list[str], list[str], int]:
        texts = [""] * chat.n
        reasons = ["stop"] * chat.n
        completion_tokens = 0
        async for event in self._events(chat, plan):
            if isinstance(event, TokenDelta):
                texts[event.row] += event.text
            else:
                reasons[event.row] = event.reason
                completion_tokens += event.completion_tokens
        return texts, reasons, completion_tokens

    async def complete(self, chat: PreparedChat) -> ChatCompletion:
        """Run to completion (re-running with the intervention if the audit flags the answer)
        and build the JSON response."""
        texts, reasons, completion_tokens = await self._collect(chat, chat.plan)
        if self._audits(chat):
            verdict = await anyio.to_thread.run_sync(self._audit, texts)
            if verdict.flagged:
                texts, reasons, completion_tokens = await self._collect(
                    chat, self._replan(chat, verdict)
                )
        redactors = self._redactors(chat)
        choices = [
            Choice(
                index=i,
                message=ResponseMessage(content=redactors[i].redact(texts[i])),
                finish_reason=reasons[i],
            )
            for i in range(chat.n)
        ]
        prompt_tokens = len(chat.prompt.ids)
        self.metrics.completion_tokens.inc(completion_tokens)
        return ChatCompletion(
            id=chat.id,
            created=chat.created,
            model=self.model_name,
            choices=choices,
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )

    def _chunk(self, chat: PreparedChat, choices: list[ChunkChoice]) -> str:
        return model_dump_sse(
            ChatCompletionChunk(
                id=chat.id, created=chat.created, model=self.model_name, choices=choices
            )
        )

    async def _audited_events(self, chat: PreparedChat) -> AsyncIterator[TokenDelta | RowFinished]:
        """Events of an unflagged stream, audited before and while they go out.

        The first `answer_audit_lookahead_chars` of every row are held back and audited; a
        flagged answer is discarded and the request re-run with the intervention before the
        client saw any of it. Past the look-ahead, a row whose text starts naming a target
        ends at once with finish_reason `content_filter`.
        """
        lookahead = self.settings.answer_audit_lookahead_chars
        events = self._events(chat, chat.plan).__aiter__()
        held: list[TokenDelta | RowFinished] = []
        texts = [""] * chat.n
        open_rows = set(range(chat.n))
        async for event in events:
            held.append(event)
            if isinstance(event, TokenDelta):
                texts[event.row] += event.text
            else:
                open_rows.discard(event.row)
            if all(len(texts[r]) >= lookahead for r in open_rows):
                break
        verdict = await anyio.to_thread.run_sync(self._audit, texts)
        if verdict.flagged:
            await events.aclose()  # type: ignore[attr-defined]
            async for event in self._events(chat, self._replan(chat, verdict)):
                yield event
            return
        for event in held:
            yield event
        stopped: set[int] = set()
        async for event in events:
            if event.row in stopped:
                continue
            if isinstance(event, TokenDelta):
                texts[event.row] += event.text
                tail = texts[event.row][-(lookahead + len(event.text)) :]
                cut = self._audit([tail])
                if cut.flagged:
                    stopped.add(event.row)
                    self._record(chat, InterventionStage.STREAM, "content_filter", cut)
                    yield RowFinished(event.row, "content_filter", 0)
                    continue
            yield event

    async def stream(self, chat: PreparedChat) -> AsyncIterator[str]:
        """SSE frames: a role chunk, content deltas, finish chunks, optional usage, [DONE]."""
        # Built at the first event: by then the answer audit has decided on any re-run.
        redactors: list[Redactor] = []
        completion_tokens = 0
        yield self._chunk(
            chat,
            [
                ChunkChoice(index=i, delta=ChunkDelta(role="assistant", content=""))
                for i in range(chat.n)
            ],
        )
        source = self._audited_events(chat) if self._audits(chat) else self._events(chat, chat.plan)
        try:
            async for event in source:
                redactors = redactors or self._redactors(chat)
                if isinstance(event, TokenDelta):
                    text = redactors[event.row].feed(event.text)
                    if text:
                        yield self._chunk(
                            chat, [ChunkChoice(index=event.row, delta=ChunkDelta(content=text))]
                        )
                    continue
                completion_tokens += event.completion_tokens
                self.metrics.completion_tokens.inc(event.completion_tokens)
                tail = redactors[event.row].flush()
                if tail:
                    yield self._chunk(
                        chat, [ChunkChoice(index=event.row, delta=ChunkDelta(content=tail))]
                    )
                yield self._chunk(
                    chat,
                    [ChunkChoice(index=event.row, delta=ChunkDelta(), finish_reason=event.reason)],
                )
        except Exception:
            # Once a 200 has gone out, an error travels as a final data frame.
            logger.exception("stream %s failed", chat.id)
            yield (
                'data: {"error": {"message": "generation failed", "type": "server_error", '
                '"param": null, "code": "internal_error"}}\n\n'
            )
            yield "data: [DONE]\n\n"
            return
        if chat.include_usage:
            prompt_tokens = len(chat.prompt.ids)
            yield model_dump_sse(
                ChatCompletionChunk(
                    id=chat.id,
                    created=chat.created,
                    model=self.model_name,
                    choices=[],
                    usage=Usage(
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        total_tokens=prompt_tokens + completion_tokens,
                    ),
                )
            )
        yield "data: [DONE]\n\n"
