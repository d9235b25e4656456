"""Per-target threshold calibration against the benign corpus that ships with the gateway."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt

from guards.embedder import Embedder, Vectors
from guards.names import names_foreign, proper_names
from guards.windows import split_windows

logger = logging.getLogger(__name__)


def load_benign_prompts(path: Path | None = None) -> list[str]:
    """The benign corpus: one everyday prompt per line (the packaged file by default)."""
    if path is None:
        raw = resources.files("guards").joinpath("data/benign_prompts.txt").read_text("utf-8")
    else:
        raw = path.read_text("utf-8")
    return [line.strip() for line in raw.splitlines() if line.strip()]


def relative_score(
    target_sim: npt.NDArray[np.float32],
    benign_sim: npt.NDArray[np.float32],
    benign_weight: float,
) -> npt.NDArray[np.float32]:
    """How much closer a window is to a target than to everyday traffic.

    Plain cosine cannot separate "Who was Albert Einstein?" from an Isaac Newton target (0.62)
    while paraphrases of the target score lower still; subtracting the similarity to the nearest
    benign corpus prompt discounts what is merely the shape of a common question.
    """
    return (target_sim - benign_weight * benign_sim).astype(np.float32)


@dataclass(frozen=True)
class ThresholdConfig:
    """How thresholds are derived from corpus scores."""

    benign_weight: float  # weight of the nearest-benign similarity in the score
    fpr: float  # share of corpus prompts a target may flag
    floor: float  # lowest threshold allowed
    margin: float  # added to the corpus quantile
    foreign_name_penalty: float = 0.0  # off a window naming what the target's texts do not


class BenignCorpus:
    """Benign prompts with their window embeddings, cached on disk per embedder and corpus."""

    def __init__(
        self,
        prompts: list[str],
        embedder: Embedder,
        window_words: int,
        cache_dir: Path | None = None,
    ) -> None:
        self.prompts = prompts
        owners: list[int] = []
        texts: list[str] = []
        for i, prompt in enumerate(prompts):
            for w in split_windows(prompt, window_words):
                owners.append(i)
                texts.append(w.text)
        self.owner: npt.NDArray[np.int64] = np.asarray(owners, dtype=np.int64)  # [n_windows]
        self.window_texts = texts
        self.window_names = [proper_names(t) for t in texts]  # [n_windows]
        self.vectors: Vectors = self._embed(texts, embedder, window_words, cache_dir)
        self._index = faiss.IndexFlatIP(self.vectors.shape[1])
        self._index.add(self.vectors)
        # Each corpus window's nearest benign neighbour from *another* prompt: what `nearest`
        # would return for it if it arrived as a request.
        self.neighbour = self._leave_one_out()  # [n_windows]

    def _leave_one_out(self, k: int = 8) -> npt.NDArray[np.float32]:
        scores, ids = self._index.search(self.vectors, min(k, len(self.vectors)))
        out = np.zeros(len(self.vectors), dtype=np.float32)
        for row in range(len(self.vectors)):
            others = [
                s
                for s, i in zip(scores[row], ids[row], strict=True)
                if i >= 0 and self.owner[i] != self.owner[row]
            ]
            out[row] = others[0] if others else 0.0
        return out

    def nearest(self, queries: Vectors) -> npt.NDArray[np.float32]:
        """Per query row: cosine of the most similar benign corpus window."""
        if len(queries) == 0 or self._index.ntotal == 0:
            return np.zeros(len(queries), dtype=np.float32)
        scores, _ = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), 1)
        return scores[:, 0].astype(np.float32)

    @staticmethod
    def _embed(
        texts: list[str], embedder: Embedder, window_words: int, cache_dir: Path | None
    ) -> Vectors:
        key = hashlib.sha256(
            "\n".join([embedder.name, str(window_words), *texts]).encode("utf-8")
        ).hexdigest()[:16]
        cache = cache_dir / f"corpus-{key}.npy" if cache_dir else None
        if cache is not None and cache.exists():
            vecs = np.load(cache)
            if vecs.shape == (len(texts), embedder.dim):
                return np.ascontiguousarray(vecs, dtype=np.float32)
        logger.info("embedding benign corpus (%d windows)", len(texts))
        vecs = embedder.encode(texts)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npy")
            np.save(tmp, vecs)
            tmp.replace(cache)
        return vecs

    def prompt_scores(
        self,
        target_vectors: Vectors,
        benign_weight: float,
        vocabulary: frozenset[str] = frozenset(),
        foreign_name_penalty: float = 0.0,
    ) -> npt.NDArray[np.float32]:
        """Per corpus prompt: its best window score against the target (see `relative_score`),
        less `foreign_name_penalty` for windows naming what `vocabulary` does not contain."""
        window_best = relative_score(
            (self.vectors @ target_vectors.T).max(axis=1), self.neighbour, benign_weight
        )  # [n_windows]
        if foreign_name_penalty:
            foreign = [names_foreign(n, vocabulary) for n in self.window_names]
            window_best = window_best - foreign_name_penalty * np.asarray(foreign, np.float32)
        out = np.full(len(self.prompts), -1.0, dtype=np.float32)
        np.maximum.at(out, self.owner, window_best)
        return out


def calibrate_threshold(
    scores: npt.NDArray[np.float32], about_target: npt.NDArray[np.bool_], config: ThresholdConfig
) -> float:
    """Threshold so that at most `config.fpr` of the corpus is flagged.

    Prompts that are themselves about the target (`about_target`, e.g. they name one of its
    aliases) are left out, so a corpus that happens to mention the target cannot drag its
    threshold up.

    Example:
        >>> s = np.linspace(0, 0.5, 100).astype(np.float32)
        >>> calibrate_threshold(s, np.zeros(100, bool), ThresholdConfig(0.01, 0.3, 0.0)) > 0.49
        True
    """
    kept = scores[~about_target]
    if len(kept) == 0:
        return config.floor
    # "higher" picks an observed score, so at most fpr of the corpus lies strictly above it;
    # the detector flags scores >= threshold, hence the step just above it.
    q = float(np.quantile(kept, 1.0 - config.fpr, method="higher"))
    return max(config.floor, float(np.nextafter(np.float32(q), np.float32(np.inf))) + config.margin)
