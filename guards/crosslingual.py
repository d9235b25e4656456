"""The detector's second embedding signal: questions in other languages than English.

MiniLM (the main embedder) reads English only: "¿Quién descubrió la gravedad?" scores 0.14
against an Isaac Newton target, below every benign neighbour. A multilingual embedder maps a
question and its translation close together, but it is also looser on English neighbours
("Who was Albert Einstein?" scores as high as paraphrases of Newton). So this channel is only
asked about windows that do not look English (`guards.language.looks_english`), and its
threshold is calibrated on the benign corpus windows that the same gate sends to it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from guards.calibration import BenignCorpus, ThresholdConfig, calibrate_threshold, relative_score
from guards.embedder import Embedder, Vectors
from guards.index import FaissVectorIndex
from guards.language import looks_english
from guards.targets import TargetSpec


@dataclass(frozen=True)
class CrossLingualEntry:
    """A target as this channel enforces it: its registration texts' vectors and threshold."""

    vectors: Vectors
    threshold: float


class CrossLingualChannel:
    """Multilingual embeddings of each target's registration texts, searched for non-English
    windows.

    Only the operator's texts (name, aliases, examples, description) are embedded, not the
    model's English expansion: a translated question lands near the question it translates.
    Entries are derived from the spec alone, so every replica computes the same ones and
    nothing is stored.

    Example:
        >>> channel = CrossLingualChannel(embedder, corpus, config)  # doctest: +SKIP
        >>> channel.add("tgt_1", channel.prepare(spec, about))  # doctest: +SKIP
        >>> channel.search(["¿Quién descubrió la gravedad?"])  # doctest: +SKIP
        {'tgt_1': (0.59, 0)}
    """

    def __init__(self, embedder: Embedder, corpus: BenignCorpus, config: ThresholdConfig) -> None:
        self.embedder = embedder
        self.corpus = corpus
        self.config = config
        self.index = FaissVectorIndex(embedder.dim)
        self._thresholds: dict[str, float] = {}
        self._lock = threading.Lock()
        # Corpus windows the gate would route here: only their scores calibrate a threshold.
        self._routed = np.fromiter(
            (not looks_english(text) for text in corpus.window_texts),
            dtype=bool,
            count=len(corpus.window_texts),
        )

    def prepare(self, spec: TargetSpec, about: npt.NDArray[np.bool_]) -> CrossLingualEntry:
        """Embed a target's texts and calibrate its threshold (no lock held; call before `add`).

        `about` marks corpus prompts that name the target: they do not count as false positives.
        """
        vectors = self.embedder.encode(spec.texts())
        corpus = self.corpus
        window_best = relative_score(
            (corpus.vectors @ vectors.T).max(axis=1), corpus.neighbour, self.config.benign_weight
        )
        routed = self._routed & ~about[corpus.owner]
        scores = window_best[routed]
        threshold = calibrate_threshold(scores, np.zeros(len(scores), dtype=bool), self.config)
        return CrossLingualEntry(vectors=vectors, threshold=threshold)

    def add(self, target_id: str, entry: CrossLingualEntry) -> None:
        """Enforce (or replace) a target's entry."""
        with self._lock:
            self.index.add(target_id, entry.vectors)
            self._thresholds[target_id] = entry.threshold

    def remove(self, target_id: str) -> None:
        """Stop searching for a target."""
        with self._lock:
            self.index.remove(target_id)
            self._thresholds.pop(target_id, None)

    def threshold(self, target_id: str) -> float | None:
        """A target's threshold here, or None when it is not enforced by this channel."""
        return self._thresholds.get(target_id)

    def __len__(self) -> int:
        return len(self._thresholds)

    def search(self, texts: list[str], top_k: int = 16) -> dict[str, tuple[float, int]]:
        """Per target at or above its threshold: its best window score and that window's row.

        Scores are relative, as in the main channel: cosine minus the benign weight times the
        similarity to the nearest benign corpus window.
        """
        if not texts or len(self) == 0:
            return {}
        vectors = self.embedder.encode(texts)
        benign = self.corpus.nearest(vectors)
        best: dict[str, tuple[float, int]] = {}
        for hit in self.index.search(vectors, top_k):
            score = hit.score - self.config.benign_weight * float(benign[hit.query])
            if score > best.get(hit.target_id, (-9.0, -1))[0]:
                best[hit.target_id] = (score, hit.query)
        out: dict[str, tuple[float, int]] = {}
        for target_id, (score, row) in best.items():
            threshold = self._thresholds.get(target_id)
            if threshold is not None and score >= threshold:
                out[target_id] = (score, row)
        return out
