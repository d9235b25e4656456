"""Background refinement of a registered target: expansion by the served model, ECO strength search.

Registration returns as soon as the target is enforced (aliases, embeddings, corpus threshold,
default ECO strength). This job then, with progress visible in the admin API:
1. asks the served model the target's example questions: what it answers is what it would
   leak, so those sentences join the target's index vectors and its threshold is recalibrated;
2. searches the smallest ECO noise strength at which the model's answers to the examples no
   longer contain the target's distinctive words (bisection, zeroth-order as in the ECO paper),
   times a safety factor;
3. for steer, lora and auto targets, computes the steering vectors and searches their strength
   under the same objective plus a fluency bound (app/steering_calibration.py);
4. for auto targets, picks the method (`choose_auto`); for lora targets, queues the adapter's
   training (app/adapter_jobs.py), enforced by steering or ECO until it is ready.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import replace
from typing import Any

import anyio

from adapters.engine import Engine, GenerationRequest, SamplingParams
from adapters.prompt import render
from app.adapter_jobs import AdapterTrainer
from app.settings import Settings
from app.steering_calibration import SteeringCalibration
from app.strength_search import StrengthSearch, choose_auto
from guards.contrast import target_questions
from guards.detector import Detector
from guards.leak_terms import answer_terms, corpus_vocabulary, derive_leak_terms, leaks, words
from guards.registry import Registry
from guards.store import StoreError
from guards.targets import CalibrationState, Intervention, Target
from guards.verdict import ChatTurn, Plan, Span, noise_seed

logger = logging.getLogger(__name__)

_SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")


def answer_sentences(answers: list[str], max_sentences: int = 48) -> tuple[str, ...]:
    """Complete, informative sentences of the model's answers, de-duplicated."""
    seen: set[str] = set()
    out: list[str] = []
    for answer in answers:
        for m in _SENTENCE.finditer(answer):
            s = m.group(0).strip()
            if not s.endswith((".", "!", "?")) or not 4 <= len(s.split()) <= 48:
                continue
            if s.casefold() not in seen:
                seen.add(s.casefold())
                out.append(s)
    return tuple(out[:max_sentences])


class TargetCalibrator:
    """Runs calibration jobs on the event loop (the engine batches their generations)."""

    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        detector: Detector,
        settings: Settings,
        adapters: AdapterTrainer | None = None,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.detector = detector
        self.settings = settings
        self.adapters = adapters
        self.steering = SteeringCalibration(engine, registry, settings)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._common = corpus_vocabulary(registry.corpus.prompts)

    def start(self, workers: int = 2) -> None:
        """Start the worker tasks (inside the running loop); each calibrates one target."""
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"lethe-calibrator-{i}")
            for i in range(workers)
        ]

    async def stop(self) -> None:
        """Cancel the workers."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def submit(self, target_id: str) -> None:
        """Queue a target for calibration."""
        self._queue.put_nowait(target_id)

    async def _worker(self) -> None:
        while True:
            target_id = await self._queue.get()
            try:
                await self.calibrate(target_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("calibration of %s failed", target_id)
                try:
                    await self._update(
                        target_id, state=CalibrationState.FAILED, message=str(exc)[:200]
                    )
                except StoreError:  # the store is down too: the worker must live on
                    logger.warning("could not record the failed calibration of %s", target_id)

    async def _update(
        self, target_id: str, recalibrate: bool = False, **changes: Any
    ) -> Target | None:
        return await anyio.to_thread.run_sync(
            lambda: self.registry.update_calibration(target_id, recalibrate, **changes)
        )

    async def answer(self, question: str, plan: Plan) -> str:
        """The served model's greedy answer under a plan (batched by the engine)."""
        return await self._answer(question, plan)

    async def update(self, target_id: str, **changes: Any) -> Target | None:
        """Store calibration changes; None when the target was deleted meanwhile."""
        return await self._update(target_id, **changes)

    async def _answer(self, question: str, plan: Plan) -> str:
        prompt = render(self.engine.loaded.tokenizer, [ChatTurn("user", question)])
        request = GenerationRequest(
            prompt=prompt,
            plan=plan,
            sampling=SamplingParams(max_tokens=self.settings.expansion_max_tokens, temperature=0.0),
        )
        return await self.engine.text_of(request)

    async def flagged_plan(self, target_id: str, question: str) -> Plan:
        """An ECO plan at strength 0 on the target's spans in `question` (the whole question
        when the detector does not flag it by itself); callers set the method and strength."""
        turns = [ChatTurn("user", question)]
        verdict = await anyio.to_thread.run_sync(self.detector.inspect, turns)
        spans = tuple(s for m in verdict.matches if m.target_id == target_id for s in m.spans)
        if not spans:  # not flagged by itself: corrupt the whole question
            spans = (Span(0, 0, len(question)),)
        return Plan(action="eco", spans=spans, eco_sigma=0.0, noise_seed=noise_seed(turns))

    @staticmethod
    def _eco_probe_plan(plan: Plan, target_id: str, strength: float) -> Plan:
        return replace(plan, eco_sigma=strength)

    async def calibrate(self, target_id: str) -> None:
        """Expand, recalibrate, search the ECO and steering strengths, pick `auto`'s method."""
        target = await self._update(target_id, state=CalibrationState.RUNNING, progress=0.05)
        if target is None:
            return
        spec = target.spec
        questions = target_questions(spec)
        # All questions at once: the engine batches them.
        answers = list(await asyncio.gather(*(self._answer(q, Plan()) for q in questions)))
        if await self._update(target_id, progress=0.3) is None:
            return  # deleted meanwhile
        alias_words = {w for a in spec.all_aliases() for w in words(a)}
        facts = answer_terms(questions, answers, self._common) - alias_words
        target = await self._update(
            target_id,
            recalibrate=True,
            expansion=answer_sentences(answers),
            fact_terms=tuple(sorted(facts)),
            progress=0.35,
        )
        if target is None:
            return
        terms = derive_leak_terms(spec, questions, answers, self._common)
        leaking = [q for q, a in zip(questions, answers, strict=True) if leaks(a, q, terms)]
        search = StrengthSearch(self, target_id, leaking or questions[:4], terms)
        wanted = spec.intervention
        sigma = self.settings.eco_default_sigma
        if leaking and wanted in (Intervention.ECO, Intervention.AUTO):
            hi = await search.bisect(
                self._eco_probe_plan, 2 * sigma, self.settings.eco_search_steps, 0.35, 0.55
            )
            if hi is None:
                return
            sigma = min(hi * self.settings.eco_safety_factor, 2 * sigma)
        changes: dict[str, Any] = {"eco_sigma": round(sigma, 4)}
        message = f"{len(terms)} leak terms, {len(leaking)} leaking examples"
        if wanted in (Intervention.STEER, Intervention.LORA, Intervention.AUTO):
            steered = await self.steering.calibrate(target_id, spec, questions, search)
            if steered is None:
                return
            changes["steer_strength"] = steered.strength
            message += f"; steering: {steered.note}"
            if wanted is Intervention.AUTO:
                eco = await search.measure(self._eco_probe_plan, sigma)
                changes["auto_method"] = choose_auto(steered, eco)
                message += f"; auto -> {changes['auto_method']}"
        if wanted is Intervention.LORA and self.adapters is not None:
            self.adapters.submit(target_id)  # marked training before calibration reads done
        await self._update(
            target_id,
            state=CalibrationState.DONE,
            progress=1.0,
            message=message,
            **changes,
        )
        logger.info("target %s calibrated: %s", target_id, {k: str(v) for k, v in changes.items()})
