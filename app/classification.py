"""What the gateway decides for a conversation, as `/admin/classify` reports it.

A chat request goes through two stages (app/chat.py): the prompt detector, and for requests it
leaves unflagged, the answer audit, which re-runs the request with the intervention when the
served model's answer names a target. Classification reports the first stage by default and
both on request, so that an operator (and `lethe eval`) can see everything the gateway acts on
without sending a chat request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio

from adapters.engine import Engine, GenerationRequest, SamplingParams
from adapters.prompt import PromptError, render
from app.errors import BadRequest, ContextLengthExceeded, Overloaded
from app.settings import Settings
from guards.detector import Detector
from guards.verdict import ChatTurn, Plan, Verdict


@dataclass(frozen=True)
class Classification:
    """A verdict and whether the served model's answer was generated and audited for it."""

    verdict: Verdict
    audited: bool = False


class ConversationClassifier:
    """The prompt detector's verdict and, when asked, the answer audit's."""

    def __init__(self, engine: Engine, detector: Detector, settings: Settings) -> None:
        self.engine = engine
        self.detector = detector
        self.settings = settings

    async def classify(
        self, turns: list[ChatTurn], audit_tokens: int | None = None
    ) -> Classification:
        """The verdict for `turns`; with `audit_tokens`, an unflagged conversation's greedy
        answer of up to that many tokens is generated and audited as the chat path would."""
        verdict = await anyio.to_thread.run_sync(self.detector.inspect, turns)
        audits = self.settings.answer_audit and len(self.detector.registry) > 0
        if verdict.flagged or audit_tokens is None or not audits:
            return Classification(verdict)
        answer = await self._greedy_answer(turns, audit_tokens)
        audited = await anyio.to_thread.run_sync(self.detector.inspect_answer, answer)
        return Classification(audited, audited=True)

    async def _greedy_answer(self, turns: list[ChatTurn], max_tokens: int) -> str:
        try:
            prompt = render(self.engine.loaded.tokenizer, turns)
        except PromptError as exc:
            raise BadRequest(str(exc), param="messages") from exc
        room = self.engine.loaded.context_length - len(prompt.ids)
        if room < 1:
            raise ContextLengthExceeded(
                f"the prompt is {len(prompt.ids)} tokens but this model's context window is "
                f"{self.engine.loaded.context_length} tokens",
                param="messages",
            )
        if not self.engine.has_capacity():
            raise Overloaded("the gateway is at capacity; retry shortly")
        request = GenerationRequest(
            prompt=prompt,
            plan=Plan(),
            sampling=SamplingParams(max_tokens=min(max_tokens, room), temperature=0.0),
            deadline=time.monotonic() + self.settings.request_timeout_s,
        )
        return await self.engine.text_of(request)
