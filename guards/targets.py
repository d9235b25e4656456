"""The forget-target model: what an operator registers and what the gateway derives from it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from functools import cached_property

from guards.names import vocabulary


class Intervention(enum.StrEnum):
    """How a flagged request is answered."""

    AUTO = "auto"
    ECO = "eco"
    STEER = "steer"
    LORA = "lora"
    REFUSE = "refuse"


class CalibrationState(enum.StrEnum):
    """Progress of the background work that refines a target after registration."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class TargetSpec:
    """What an operator submits: the deletion request itself."""

    name: str
    description: str = ""
    aliases: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()
    redact: tuple[str, ...] = ()
    intervention: Intervention = Intervention.AUTO

    def texts(self) -> list[str]:
        """Registration texts that describe the target (embedded into the index)."""
        out = [self.name, *self.aliases, *self.examples]
        if self.description:
            out.append(self.description)
        return out

    def all_aliases(self) -> list[str]:
        """Name plus aliases, de-duplicated case-insensitively, order kept."""
        seen: set[str] = set()
        out: list[str] = []
        for alias in (self.name, *self.aliases):
            key = alias.casefold()
            if key not in seen:
                seen.add(key)
                out.append(alias)
        return out


class AdapterState(enum.StrEnum):
    """Lifecycle of a target's LoRA adapter."""

    NONE = "none"
    TRAINING = "training"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class AdapterInfo:
    """What is known about a target's LoRA adapter (its weights live in the store)."""

    state: AdapterState = AdapterState.NONE
    source: str = ""  # "trained" | "uploaded"
    progress: float = 0.0
    eta_s: float | None = None
    rank: int = 0
    message: str | None = None


@dataclass(frozen=True)
class Calibration:
    """Derived, per-target enforcement state: thresholds, strengths, expansion."""

    state: CalibrationState = CalibrationState.PENDING
    progress: float = 0.0
    message: str | None = None
    threshold: float = 1.0  # cosine at or above which an embedding window flags the target
    eco_sigma: float = 1.0  # noise strength relative to the embedding RMS
    expansion: tuple[str, ...] = ()  # what the served model said about the target
    fact_terms: tuple[str, ...] = ()  # rare names/numbers from those answers (lower-cased)
    steer_strength: float = 0.0  # 0 until a steering vector is computed and its strength searched
    auto_method: Intervention = Intervention.ECO  # what `auto` stands for, chosen at calibration
    adapter: AdapterInfo = field(default_factory=AdapterInfo)


@dataclass(frozen=True)
class Target:
    """A registered target: its spec plus identity and derived state."""

    id: str
    spec: TargetSpec
    created_at: float  # unix time; sub-second, so the registry lists targets in order
    calibration: Calibration = field(default_factory=Calibration)
    status: str = "active"

    def with_calibration(self, calibration: Calibration) -> Target:
        """A copy with new derived state."""
        return replace(self, calibration=calibration)

    def method(self) -> Intervention:
        """The method enforcing this target right now.

        A method whose state is not ready yet falls back to one that is, so that enforcement
        never waits: lora -> steer -> eco, steer -> eco, auto -> its calibrated choice.
        """
        wanted = self.spec.intervention
        cal = self.calibration
        if wanted is Intervention.AUTO:
            wanted = cal.auto_method
        if wanted is Intervention.LORA and cal.adapter.state is not AdapterState.READY:
            wanted = Intervention.STEER
        if wanted is Intervention.STEER and cal.steer_strength <= 0:
            wanted = Intervention.ECO
        return wanted

    def vector_texts(self) -> list[str]:
        """Every text whose embedding represents the target in the index."""
        return [*self.spec.texts(), *self.calibration.expansion]

    @cached_property
    def vocabulary(self) -> frozenset[str]:
        """Words of its texts, expansion and fact terms: names a window may use about it."""
        return vocabulary([*self.vector_texts(), *self.calibration.fact_terms])
