"""What the detector decides for one conversation, and the per-row plan handed to the engine."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from guards.targets import Intervention


@dataclass(frozen=True)
class ChatTurn:
    """One message of a conversation, as the detector and the engine see it."""

    role: str
    content: str


@dataclass(frozen=True)
class Span:
    """A character range inside one message's content."""

    message: int  # index into the conversation
    start: int
    end: int


@dataclass(frozen=True)
class Match:
    """One target the conversation touches."""

    target_id: str
    name: str
    score: float  # 1.0 for an alias mention, else the best window cosine
    spans: tuple[Span, ...]
    source: str  # "alias" | "embedding"
    intervention: Intervention = Intervention.ECO
    eco_sigma: float = 1.0


@dataclass(frozen=True)
class Verdict:
    """The detector's decision for a conversation."""

    matches: tuple[Match, ...] = ()

    @property
    def flagged(self) -> bool:
        """True when any target matched."""
        return bool(self.matches)

    @property
    def action(self) -> str:
        """'none', or the strongest intervention among the matches (refuse beats eco)."""
        if not self.matches:
            return "none"
        kinds = {m.intervention.resolved() for m in self.matches}
        return Intervention.REFUSE.value if Intervention.REFUSE in kinds else Intervention.ECO.value


@dataclass(frozen=True)
class Plan:
    """How the engine treats one row. `none` must leave the model's computation untouched."""

    action: str = "none"  # none | eco | refuse
    spans: tuple[Span, ...] = field(default_factory=tuple)  # ECO: where to corrupt
    eco_sigma: float = 0.0
    noise_seed: int = 0

    @staticmethod
    def for_whole_turns(verdict: Verdict, turns: list[ChatTurn], noise_seed: int = 0) -> Plan:
        """The plan for a conversation whose answer, not its text, showed the target: corrupt
        every user turn, since no span of the prompt is known to carry the target."""
        spans = tuple(Span(i, 0, len(t.content)) for i, t in enumerate(turns) if t.role == "user")
        matches = tuple(replace(m, spans=()) for m in verdict.matches)
        plan = Plan.from_verdict(Verdict(matches=matches), noise_seed)
        return replace(plan, spans=spans) if plan.action == "eco" else plan

    @staticmethod
    def from_verdict(verdict: Verdict, noise_seed: int = 0) -> Plan:
        """The plan a verdict calls for."""
        action = verdict.action
        if action != Intervention.ECO.value:
            return Plan(action=action)
        spans = tuple(s for m in verdict.matches for s in m.spans)
        sigma = max(m.eco_sigma for m in verdict.matches)
        return Plan(action=action, spans=spans, eco_sigma=sigma, noise_seed=noise_seed)


def noise_seed(turns: list[ChatTurn]) -> int:
    """A stable seed per conversation, so the same prompt always gets the same ECO noise."""
    digest = hashlib.sha256("\x00".join(t.content for t in turns).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")
