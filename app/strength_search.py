"""Searches an intervention's strength on a target's own questions, and measures the result.

Objective (shared by ECO and steering): the smallest strength at which the served model's
greedy answers to the target's questions no longer contain the target's distinctive words.
Steering adds a fluency bound: the answers' mean perplexity under the bare model must stay
within `steer_fluency_factor` of the bare answers' (plausible ignorance, not gibberish).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from adapters.scoring import perplexity
from guards.leak_terms import leaks
from guards.targets import Intervention
from guards.verdict import ChatTurn, Plan

if TYPE_CHECKING:
    from app.calibrator import TargetCalibrator

PlanAt = Callable[[Plan, str, float], Plan]  # (flagged base plan, target id, strength) -> plan


@dataclass(frozen=True)
class Outcome:
    """How a method did on a target's questions at one strength."""

    strength: float
    leaked: int  # questions whose answer still leaked
    perplexity: float  # mean perplexity of the answers under the bare model
    fluent: bool
    note: str = ""


def choose_auto(steer: Outcome, eco: Outcome) -> Intervention:
    """`auto`'s rule: steering when it is fluent, leaks no more than ECO and reads at least as
    naturally (lower perplexity); otherwise ECO, which needs nothing but the prompt. LoRA is
    never chosen automatically: it costs minutes of training per target."""
    if steer.strength > 0 and steer.fluent and steer.leaked <= eco.leaked:
        if steer.perplexity <= eco.perplexity:
            return Intervention.STEER
    return Intervention.ECO


class StrengthSearch:
    """Bisection and measurement of one target's intervention strength (progress shown)."""

    def __init__(
        self, calibrator: TargetCalibrator, target_id: str, questions: list[str], terms: set[str]
    ) -> None:
        self.calibrator = calibrator
        self.target_id = target_id
        self.questions = questions
        self.terms = terms
        self._plans: list[Plan] | None = None
        self._bare_perplexity: float | None = None

    async def _base_plans(self) -> list[Plan]:
        if self._plans is None:
            self._plans = [
                await self.calibrator.flagged_plan(self.target_id, q) for q in self.questions
            ]
        return self._plans

    async def answers(self, plan_at: PlanAt, strength: float) -> list[str]:
        """Greedy answers to the questions with the method at `strength` (one batch)."""
        plans = [plan_at(p, self.target_id, strength) for p in await self._base_plans()]
        return list(
            await asyncio.gather(
                *(self.calibrator.answer(q, p) for q, p in zip(self.questions, plans, strict=True))
            )
        )

    def _leaked(self, answers: list[str]) -> int:
        return sum(leaks(a, q, self.terms) for q, a in zip(self.questions, answers, strict=True))

    async def bisect(
        self, plan_at: PlanAt, hi: float, steps: int, progress_from: float, progress_to: float
    ) -> float | None:
        """The smallest strength in (0, hi] found not to leak (hi when every step leaked);
        None when the target was deleted meanwhile."""
        lo = 0.0
        for step in range(steps):
            mid = (lo + hi) / 2
            leaked = self._leaked(await self.answers(plan_at, mid)) > 0
            lo, hi = (mid, hi) if leaked else (lo, mid)
            done = progress_from + (progress_to - progress_from) * (step + 1) / steps
            if await self.calibrator.update(self.target_id, progress=done) is None:
                return None
        return hi

    async def _mean_perplexity(self, answers: list[str]) -> float:
        lm = self.calibrator.engine.loaded
        scores = [
            await anyio.to_thread.run_sync(perplexity, lm, [ChatTurn("user", q)], a)
            for q, a in zip(self.questions, answers, strict=True)
        ]
        return sum(scores) / len(scores)

    async def bare_perplexity(self) -> float:
        """Mean perplexity of the bare model's own answers to the questions."""
        if self._bare_perplexity is None:
            answers = await self.answers(lambda p, t, s: Plan(), 0.0)
            self._bare_perplexity = await self._mean_perplexity(answers)
        return self._bare_perplexity

    async def measure(self, plan_at: PlanAt, strength: float) -> Outcome:
        """Leaks and fluency of the method at `strength`."""
        answers = await self.answers(plan_at, strength)
        ppl = await self._mean_perplexity(answers)
        bound = self.calibrator.settings.steer_fluency_factor * await self.bare_perplexity()
        return Outcome(
            strength=strength,
            leaked=self._leaked(answers),
            perplexity=round(ppl, 2),
            fluent=ppl <= bound,
            note=f"strength {strength:.3f}, perplexity {ppl:.1f} (bound {bound:.1f})",
        )
