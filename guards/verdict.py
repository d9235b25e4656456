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
    source: str  # "alias" | "embedding" | "answer"
    intervention: Intervention = Intervention.ECO  # the method enforcing the target now
    eco_sigma: float = 1.0
    steer_strength: float = 0.0
    confidence: float = 1.0  # how sure the detector is, in (0, 1]; scales a LoRA adapter


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
        """'none', or the strongest method among the matches (refuse > lora > steer > eco)."""
        if not self.matches:
            return "none"
        kinds = {m.intervention for m in self.matches}
        for kind in _PRECEDENCE:
            if kind in kinds:
                return kind.value
        return Intervention.ECO.value


_PRECEDENCE = (Intervention.REFUSE, Intervention.LORA, Intervention.STEER, Intervention.ECO)


@dataclass(frozen=True)
class SteerRef:
    """Steer a row with a target's steering vector at this strength."""

    target_id: str
    strength: float


@dataclass(frozen=True)
class LoraRef:
    """Apply a target's LoRA adapter to a row, scaled (O3's soft loading)."""

    target_id: str
    scale: float


@dataclass(frozen=True)
class Plan:
    """How the engine treats one row. `none` must leave the model's computation untouched.

    `spans` and `eco_sigma` are filled for every flagged row: they are what `eco` corrupts, and
    the fallback the engine uses when a steering vector or adapter is not loaded on this
    replica yet.
    """

    action: str = "none"  # none | eco | steer | lora | refuse
    spans: tuple[Span, ...] = field(default_factory=tuple)  # ECO: where to corrupt
    eco_sigma: float = 0.0
    noise_seed: int = 0
    steer: tuple[SteerRef, ...] = ()
    lora: LoraRef | None = None

    @property
    def corrupts(self) -> bool:
        """True when ECO itself is one of the row's methods (not only its fallback)."""
        return self.action == Intervention.ECO.value or (
            self.action not in ("none", Intervention.REFUSE.value)
            and len(self.steer) + (self.lora is not None) == 0
        )

    @staticmethod
    def for_whole_turns(verdict: Verdict, turns: list[ChatTurn], noise_seed: int = 0) -> Plan:
        """The plan for a conversation whose answer, not its text, showed the target: corrupt
        every user turn, since no span of the prompt is known to carry the target."""
        spans = tuple(Span(i, 0, len(t.content)) for i, t in enumerate(turns) if t.role == "user")
        matches = tuple(replace(m, spans=()) for m in verdict.matches)
        plan = Plan.from_verdict(Verdict(matches=matches), noise_seed)
        return replace(plan, spans=spans) if plan.action not in ("none", "refuse") else plan

    def covering_follow_up(self, turns: list[ChatTurn]) -> Plan:
        """ECO spans extended to the whole last user turn when they lie only in earlier turns.

        A follow-up ("Who were the first people to reach its summit?" after a turn about
        Mount Everest) asks about the target without naming it, and its own words can be enough
        for the model to answer; corrupting only the earlier mention leaves them intact.
        """
        last = max((i for i, t in enumerate(turns) if t.role == "user"), default=None)
        if not self.spans or last is None or any(s.message == last for s in self.spans):
            return self
        return replace(self, spans=(*self.spans, Span(last, 0, len(turns[last].content))))

    @staticmethod
    def from_verdict(verdict: Verdict, noise_seed: int = 0) -> Plan:
        """The plan a verdict calls for.

        Every match contributes its own method: ECO matches their spans, steered targets their
        vectors (summed), and the most confident LoRA target its adapter (one per row).
        """
        action = verdict.action
        if action in ("none", Intervention.REFUSE.value):
            return Plan(action=action)
        matches = verdict.matches
        by_kind = {kind: [m for m in matches if m.intervention is kind] for kind in _PRECEDENCE}
        eco_matches = by_kind[Intervention.ECO] or list(matches)
        lora = max(by_kind[Intervention.LORA], key=lambda m: m.confidence, default=None)
        return Plan(
            action=action,
            spans=tuple(s for m in eco_matches for s in m.spans),
            eco_sigma=max(m.eco_sigma for m in matches),
            noise_seed=noise_seed,
            steer=tuple(
                SteerRef(m.target_id, m.steer_strength) for m in by_kind[Intervention.STEER]
            ),
            lora=None if lora is None else LoraRef(lora.target_id, lora.confidence),
        )


def noise_seed(turns: list[ChatTurn]) -> int:
    """A stable seed per conversation, so the same prompt always gets the same ECO noise."""
    digest = hashlib.sha256("\x00".join(t.content for t in turns).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")
