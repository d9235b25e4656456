"""Steering at registration: vectors from forward passes, strength from a search."""

from __future__ import annotations

from dataclasses import replace

import anyio

from adapters.engine import Engine
from adapters.steering import band, compute_steering
from app.settings import Settings
from app.strength_search import Outcome, StrengthSearch
from guards.contrast import question_pairs
from guards.registry import Registry
from guards.targets import TargetSpec
from guards.verdict import Plan, SteerRef

STEERING_ARTIFACT = "steering"


def steer_plan(plan: Plan, target_id: str, strength: float) -> Plan:
    """A flagged plan steered by one target at `strength` (no ECO noise)."""
    return replace(plan, action="steer", eco_sigma=0.0, steer=(SteerRef(target_id, strength),))


class SteeringCalibration:
    """Computes, stores and loads a target's steering vectors, then searches their strength."""

    def __init__(self, engine: Engine, registry: Registry, settings: Settings) -> None:
        self.engine = engine
        self.registry = registry
        self.settings = settings

    async def calibrate(
        self, target_id: str, spec: TargetSpec, questions: list[str], search: StrengthSearch
    ) -> Outcome | None:
        """The steering outcome for a target (strength 0 when it cannot be steered); None when
        the target was deleted meanwhile."""
        s = self.settings
        pairs = question_pairs(spec, questions)
        if not pairs.target:
            return Outcome(0.0, 0, 0.0, False, "no question names the target")
        layers = band(self.engine.patches.num_layers, s.steer_band_start, s.steer_band_end)
        vectors = await anyio.to_thread.run_sync(
            compute_steering,
            self.engine.loaded,
            self.engine.patches,
            pairs.target,
            pairs.contrast,
            layers,
        )
        stored = await anyio.to_thread.run_sync(
            self.registry.put_artifact, target_id, STEERING_ARTIFACT, vectors.to_bytes()
        )
        if not stored:
            return None
        self.engine.bank.put_steering(target_id, vectors)
        hi = await search.bisect(steer_plan, s.steer_max_strength, s.steer_search_steps, 0.55, 0.85)
        if hi is None:
            return None
        # The safety margin only where it keeps the answers fluent.
        for strength in (min(hi * s.steer_safety_factor, s.steer_max_strength), hi):
            outcome = await search.measure(steer_plan, round(strength, 4))
            if outcome.fluent:
                return outcome
        return replace(outcome, note=outcome.note + ", not fluent")
