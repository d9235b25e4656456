"""Decides whether a conversation touches a registered target: embeddings + alias matcher."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from guards.registry import Registry
from guards.verdict import ChatTurn, Match, Span, Verdict
from guards.windows import Window, split_windows

logger = logging.getLogger(__name__)


@dataclass
class _Evidence:
    score: float = 0.0
    spans: list[Span] = field(default_factory=list)
    source: str = "embedding"


class Detector:
    """Inspects every turn of a conversation against the live registry.

    Two signals: (1) each message is split into windows, embedded and searched in the vector
    index; a target matches when a window's cosine reaches that target's calibrated threshold;
    (2) the alias matcher finds obfuscated mentions of a target's names with their spans.

    Example:
        >>> verdict = Detector(registry, window_words=24).inspect(
        ...     [ChatTurn("user", "Who is D4rth V4der?")])  # doctest: +SKIP
        >>> verdict.flagged  # doctest: +SKIP
        True
    """

    def __init__(self, registry: Registry, window_words: int, top_k: int = 16) -> None:
        self.registry = registry
        self.window_words = window_words
        self.top_k = top_k

    def inspect(self, turns: Sequence[ChatTurn]) -> Verdict:
        """The verdict for a conversation (all roles, earlier turns included)."""
        if len(self.registry) == 0:
            return Verdict()
        evidence: dict[str, _Evidence] = {}

        # Alias mentions: exact spans, full confidence.
        for mi, turn in enumerate(turns):
            for mention in self.registry.aliases.find(turn.content):
                ev = evidence.setdefault(mention.target_id, _Evidence())
                ev.score, ev.source = 1.0, "alias"
                ev.spans.append(Span(mi, mention.start, mention.end))

        # Embedding windows.
        windows: list[tuple[int, Window]] = [
            (mi, w)
            for mi, turn in enumerate(turns)
            for w in split_windows(turn.content, self.window_words)
        ]
        if windows:
            vectors = self.registry.embedder.encode([w.text for _, w in windows])
            best: dict[str, tuple[float, int]] = {}
            for hit in self.registry.index.search(vectors, self.top_k):
                if hit.score > best.get(hit.target_id, (-1.0, -1))[0]:
                    best[hit.target_id] = (hit.score, hit.query)
            for target_id, (score, row) in best.items():
                target = self.registry.get(target_id)
                if target is None or score < target.calibration.threshold:
                    continue
                mi, window = windows[row]
                ev = evidence.setdefault(target_id, _Evidence())
                if ev.source != "alias":
                    ev.score = score
                ev.spans.append(Span(mi, window.start, window.end))

        matches: list[Match] = []
        for target_id, ev in evidence.items():
            target = self.registry.get(target_id)
            if target is None:
                continue
            matches.append(
                Match(
                    target_id=target_id,
                    name=target.spec.name,
                    score=round(ev.score, 4),
                    spans=tuple(sorted(set(ev.spans), key=lambda s: (s.message, s.start))),
                    source=ev.source,
                    intervention=target.spec.intervention,
                    eco_sigma=target.calibration.eco_sigma,
                )
            )
        matches.sort(key=lambda m: -m.score)
        if matches:
            logger.info(
                "flagged: %s",
                ", ".join(f"{m.target_id}({m.source} {m.score:.2f})" for m in matches),
            )
        return Verdict(matches=tuple(matches))
