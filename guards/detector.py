"""Decides whether a conversation touches a registered target: embeddings + alias matcher."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from guards.language import looks_english
from guards.leak_terms import WORD_PATTERN as _WORD
from guards.names import names_foreign, proper_names
from guards.registry import Registry
from guards.targets import Target
from guards.verdict import ChatTurn, Match, Span, Verdict
from guards.windows import Window, split_windows


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

    def __init__(
        self,
        registry: Registry,
        window_words: int,
        fact_bonus: float = 0.1,
        top_k: int = 16,
        min_confidence: float = 0.6,
        confidence_span: float = 0.1,
    ) -> None:
        self.registry = registry
        self.min_confidence = min_confidence
        self.confidence_span = confidence_span
        self.window_words = window_words
        self.fact_bonus = fact_bonus
        self.top_k = top_k

    def _fact_hits(self, text: str) -> dict[str, list[tuple[int, int]]]:
        """Per target: spans of words that are among its fact terms."""
        hits: dict[str, list[tuple[int, int]]] = {}
        for m in _WORD.finditer(text):
            for target_id in self.registry.fact_owners(m.group(0).casefold().strip("'’-")):
                hits.setdefault(target_id, []).append((m.start(), m.end()))
        return hits

    def _confidence(self, ev: _Evidence, target: Target) -> float:
        """1 for a named mention; for an embedding match, rising from `min_confidence` at the
        threshold to 1 at `confidence_span` above it."""
        if ev.source != "embedding":
            return 1.0
        above = (ev.score - target.calibration.threshold) / self.confidence_span
        return round(self.min_confidence + (1 - self.min_confidence) * min(max(above, 0.0), 1.0), 4)

    def _matches(self, evidence: dict[str, _Evidence]) -> list[Match]:
        """Matches for live targets, strongest first."""
        matches: list[Match] = []
        for target_id, ev in evidence.items():
            target = self.registry.get(target_id)
            if target is None:  # deleted while we looked
                continue
            matches.append(
                Match(
                    target_id=target_id,
                    name=target.spec.name,
                    score=round(ev.score, 4),
                    spans=tuple(sorted(set(ev.spans), key=lambda s: (s.message, s.start))),
                    source=ev.source,
                    intervention=target.method(),
                    eco_sigma=target.calibration.eco_sigma,
                    steer_strength=target.calibration.steer_strength,
                    confidence=self._confidence(ev, target),
                )
            )
        matches.sort(key=lambda m: -m.score)
        return matches

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
            benign = self.registry.corpus.nearest(vectors)  # [n_windows]
            weight = self.registry.threshold_config.benign_weight
            # Rare names/numbers the model itself associates with a target ("1687" for
            # Newton) add to the window score of the windows that contain them.
            facts = [self._fact_hits(w.text) for _, w in windows]
            names = [proper_names(w.text) for _, w in windows]
            penalty = self.registry.threshold_config.foreign_name_penalty
            best: dict[str, tuple[float, int]] = {}
            for hit in self.registry.index.search(vectors, self.top_k):
                n_facts = len({w for w in facts[hit.query].get(hit.target_id, [])})
                score = (
                    hit.score
                    - weight * float(benign[hit.query])
                    + self.fact_bonus * min(n_facts, 2)
                )
                if names[hit.query] and penalty:
                    target = self.registry.get(hit.target_id)
                    if target is not None and names_foreign(names[hit.query], target.vocabulary):
                        score -= penalty
                if score > best.get(hit.target_id, (-9.0, -1))[0]:
                    best[hit.target_id] = (score, hit.query)
            for target_id, (score, row) in best.items():
                target = self.registry.get(target_id)
                if target is None or score < target.calibration.threshold:
                    continue
                self._add_window(evidence, target_id, score, windows[row])
            self._crosslingual(evidence, windows)

        return Verdict(matches=tuple(self._matches(evidence)))

    @staticmethod
    def _add_window(
        evidence: dict[str, _Evidence], target_id: str, score: float, window: tuple[int, Window]
    ) -> None:
        mi, w = window
        ev = evidence.setdefault(target_id, _Evidence())
        if ev.source != "alias":
            ev.score = max(ev.score, score)
        ev.spans.append(Span(mi, w.start, w.end))

    def _crosslingual(
        self, evidence: dict[str, _Evidence], windows: list[tuple[int, Window]]
    ) -> None:
        """Windows in other languages, searched by the multilingual channel."""
        channel = self.registry.crosslingual
        if channel is None:
            return
        routed = [(mi, w) for mi, w in windows if not looks_english(w.text)]
        found = channel.search([w.text for _, w in routed], self.top_k)
        for target_id, (score, row) in found.items():
            if self.registry.get(target_id) is not None:
                self._add_window(evidence, target_id, score, routed[row])

    def inspect_answer(self, answer: str) -> Verdict:
        """Targets a model's answer names (ALU-style audit of the response).

        Catches what slipped past `inspect`: an indirect question ("the glowing laser swords
        of the 1977 space opera") whose answer names the target. Only alias mentions count:
        they are precise enough to act on without a corpus calibration.
        """
        if len(self.registry) == 0 or not answer:
            return Verdict()
        evidence: dict[str, _Evidence] = {}
        for mention in self.registry.aliases.find(answer):
            ev = evidence.setdefault(mention.target_id, _Evidence(1.0, source="answer"))
            ev.spans.append(Span(0, mention.start, mention.end))
        return Verdict(matches=tuple(self._matches(evidence)))
