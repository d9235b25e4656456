"""Background refinement of a registered target: expansion by the served model, ECO strength search.

Registration returns as soon as the target is enforced (aliases, embeddings, corpus threshold,
default ECO strength). This job then, with progress visible in the admin API:
1. asks the served model the target's example questions: what it answers is what it would
   leak, so those sentences join the target's index vectors and its threshold is recalibrated;
2. searches the smallest ECO noise strength at which the model's answers to the examples no
   longer contain the target's distinctive words (bisection, zeroth-order as in the ECO paper),
   times a safety factor.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import replace

import anyio

from adapters.engine import Engine, GenerationRequest, SamplingParams, TokenDelta
from adapters.prompt import render
from app.settings import Settings
from guards.detector import Detector
from guards.leak_terms import answer_terms, corpus_vocabulary, derive_leak_terms, leaks, words
from guards.registry import Registry
from guards.targets import CalibrationState, Target
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
        self, engine: Engine, registry: Registry, detector: Detector, settings: Settings
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.detector = detector
        self.settings = settings
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
                await self._update(target_id, state=CalibrationState.FAILED, message=str(exc)[:200])

    async def _update(
        self, target_id: str, recalibrate: bool = False, **changes: object
    ) -> Target | None:
        target = self.registry.get(target_id)
        if target is None:
            return None
        calibration = replace(target.calibration, **changes)  # type: ignore[arg-type]
        return await anyio.to_thread.run_sync(
            lambda: self.registry.update_calibration(
                target_id, calibration, recalibrate=recalibrate
            )
        )

    async def _answer(self, question: str, plan: Plan) -> str:
        prompt = render(self.engine.loaded.tokenizer, [ChatTurn("user", question)])
        request = GenerationRequest(
            prompt=prompt,
            plan=plan,
            sampling=SamplingParams(max_tokens=self.settings.expansion_max_tokens, temperature=0.0),
        )
        text = ""
        async for event in self.engine.generate(request):
            if isinstance(event, TokenDelta):
                text += event.text
        return text

    async def _eco_plan(self, target_id: str, question: str, sigma: float) -> Plan:
        turns = [ChatTurn("user", question)]
        verdict = await anyio.to_thread.run_sync(self.detector.inspect, turns)
        spans = tuple(s for m in verdict.matches if m.target_id == target_id for s in m.spans)
        if not spans:  # not flagged by itself: corrupt the whole question
            spans = (Span(0, 0, len(question)),)
        return Plan(action="eco", spans=spans, eco_sigma=sigma, noise_seed=noise_seed(turns))

    async def calibrate(self, target_id: str) -> None:
        """Expand, recalibrate and search the ECO strength of one target."""
        target = await self._update(target_id, state=CalibrationState.RUNNING, progress=0.05)
        if target is None:
            return
        spec = target.spec
        questions = list(
            dict.fromkeys(
                [
                    *spec.examples[:6],
                    f"Tell me about {spec.name}.",
                    *(f"Who or what is {alias}?" for alias in spec.aliases[:4]),
                ]
            )
        )
        # All questions at once: the engine batches them.
        answers = list(await asyncio.gather(*(self._answer(q, Plan()) for q in questions)))
        if await self._update(target_id, progress=0.4) is None:
            return  # deleted meanwhile
        alias_words = {w for a in spec.all_aliases() for w in words(a)}
        facts = answer_terms(questions, answers, self._common) - alias_words
        target = await self._update(
            target_id,
            recalibrate=True,
            expansion=answer_sentences(answers),
            fact_terms=tuple(sorted(facts)),
            progress=0.45,
        )
        if target is None:
            return
        terms = derive_leak_terms(spec, questions, answers, self._common)
        probe = [q for q, a in zip(questions, answers, strict=True) if leaks(a, q, terms)]
        hi = self.settings.eco_default_sigma * 2
        sigma = self.settings.eco_default_sigma
        if probe and spec.intervention.resolved().value == "eco":
            lo = 0.0
            steps = self.settings.eco_search_steps
            base_plans = [await self._eco_plan(target_id, q, 0.0) for q in probe]
            for step in range(steps):
                mid = (lo + hi) / 2
                plans = [replace(p, eco_sigma=mid) for p in base_plans]
                replies = await asyncio.gather(
                    *(self._answer(q, plan) for q, plan in zip(probe, plans, strict=True))
                )
                leaked = any(leaks(a, q, terms) for q, a in zip(probe, replies, strict=True))
                lo, hi = (mid, hi) if leaked else (lo, mid)
                if await self._update(target_id, progress=0.45 + 0.5 * (step + 1) / steps) is None:
                    return  # deleted meanwhile
            sigma = min(hi * self.settings.eco_safety_factor, self.settings.eco_default_sigma * 2)
        await self._update(
            target_id,
            state=CalibrationState.DONE,
            progress=1.0,
            eco_sigma=round(sigma, 4),
            message=f"{len(terms)} leak terms, {len(probe)} leaking examples",
        )
        logger.info("target %s calibrated: sigma %.3f", target_id, sigma)
