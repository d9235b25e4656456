"""Chat service: validate -> detect -> plan -> generate -> redact, for JSON and SSE responses."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio

from adapters.engine import Engine, GenerationRequest, RowFinished, SamplingParams, TokenDelta
from adapters.prompt import PromptError, RenderedPrompt, render
from app.errors import BadRequest, ContextLengthExceeded, NotFound, Overloaded
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
from guards.output_guard import Redactor
from guards.registry import Registry
from guards.verdict import ChatTurn, Plan, Verdict, noise_seed

logger = logging.getLogger(__name__)

# Seeds a request may give: signed 64-bit integers.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


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

    # --- validation ---------------------------------------------------------------
    def _sampling(self, req: ChatCompletionRequest, prompt_tokens: int) -> SamplingParams:
        s = self.settings
        context = self.engine.loaded.context_length
        if req.temperature is not None and not 0.0 <= req.temperature <= 2.0:
            raise BadRequest("temperature must be between 0 and 2", param="temperature")
        if req.top_p is not None and not 0.0 < req.top_p <= 1.0:
            raise BadRequest("top_p must be in (0, 1]", param="top_p")
        for name in ("max_tokens", "max_completion_tokens"):
            value = getattr(req, name)
            if value is not None and value < 1:
                raise BadRequest(f"{name} must be at least 1", param=name)
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4 or any(not x for x in stop):
            raise BadRequest("stop takes up to 4 non-empty strings", param="stop")
        if req.logprobs:
            raise BadRequest("logprobs are not supported by this gateway", param="logprobs")
        if req.seed is not None and not SEED_MIN <= req.seed <= SEED_MAX:
            raise BadRequest(
                f"seed must be between {SEED_MIN} and {SEED_MAX} (a signed 64-bit integer)",
                param="seed",
            )
        requested = req.max_completion_tokens or req.max_tokens
        if prompt_tokens >= context:
            raise ContextLengthExceeded(
                f"the prompt is {prompt_tokens} tokens but this model's context window is "
                f"{context} tokens",
                param="messages",
            )
        if requested is not None and prompt_tokens + requested > context:
            raise ContextLengthExceeded(
                f"this model's maximum context length is {context} tokens; the messages take "
                f"{prompt_tokens} tokens and max_tokens asks for {requested} "
                f"({prompt_tokens + requested} in total)",
                param="max_tokens",
            )
        max_tokens = requested or min(s.max_tokens_default, context - prompt_tokens)
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            seed=req.seed,
            stop=tuple(stop),
        )

    def _check_shape(self, req: ChatCompletionRequest) -> int:
        if req.model != self.model_name:
            raise NotFound(
                f"model {req.model!r} does not exist; this gateway serves {self.model_name!r}",
                param="model",
                code="model_not_found",
            )
        if not req.messages:
            raise BadRequest("messages must contain at least one message", param="messages")
        if len(req.messages) > self.settings.max_messages:
            raise BadRequest(
                f"at most {self.settings.max_messages} messages are accepted", param="messages"
            )
        n = 1 if req.n is None else req.n
        max_n = min(self.settings.max_n, self.engine.max_batch)
        if not 1 <= n <= max_n:
            raise BadRequest(f"n must be between 1 and {max_n}", param="n")
        return n

    async def prepare(self, req: ChatCompletionRequest) -> PreparedChat:
        """Validate a request, inspect it and decide its plan."""
        n = self._check_shape(req)
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
        sampling = self._sampling(req, len(prompt.ids))
        if not self.engine.has_capacity():
            raise Overloaded("the gateway is at capacity; retry shortly")
        started = time.perf_counter()
        verdict: Verdict = await anyio.to_thread.run_sync(self.detector.inspect, turns)
        self.metrics.detector_latency.observe(time.perf_counter() - started)
        plan = Plan.from_verdict(verdict, noise_seed=noise_seed(turns))
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
            self._record(chat, InterventionStage.PROMPT, plan.action, verdict)
        return chat

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
        return [Redactor(chat.redact, self.settings.redaction_placeholder) for _ in range(chat.n)]

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
        redactors = self._redactors(chat)
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
