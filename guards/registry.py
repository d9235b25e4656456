"""The live registry: durable store plus the in-memory index and alias matcher that enforce it."""

from __future__ import annotations

import builtins
import logging
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

import numpy as np

from guards.aliases import AliasMatcher
from guards.calibration import BenignCorpus, ThresholdConfig, calibrate_threshold
from guards.embedder import Embedder
from guards.index import FaissVectorIndex, VectorIndex
from guards.store import TargetStore
from guards.targets import Calibration, Target, TargetSpec

logger = logging.getLogger(__name__)


def matcher_aliases(spec: TargetSpec) -> list[str]:
    """Strings whose mention in a conversation flags the target: name, aliases, redact strings."""
    return [*spec.all_aliases(), *spec.redact]


class Registry:
    """Targets, kept durable in a store and enforced through an index and an alias matcher.

    Writes complete their in-memory part before returning, so a target is enforced for every
    request that starts after `add` returns, and no longer after `remove` returns.

    Example:
        >>> registry = Registry(store, embedder, corpus, threshold_config, 1.5)  # doctest: +SKIP
        >>> target = registry.add(TargetSpec(name="Star Wars"))  # doctest: +SKIP
    """

    def __init__(
        self,
        store: TargetStore,
        embedder: Embedder,
        corpus: BenignCorpus,
        threshold_config: ThresholdConfig,
        default_sigma: float,
        index: VectorIndex | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.corpus = corpus
        self.threshold_config = threshold_config
        self.default_sigma = default_sigma
        self.index: VectorIndex = index or FaissVectorIndex(embedder.dim)
        self.aliases = AliasMatcher()
        self._targets: dict[str, Target] = {}
        self._write_lock = threading.Lock()

    # --- reads ----------------------------------------------------------------------
    def get(self, target_id: str) -> Target | None:
        """A live target by id."""
        return self._targets.get(target_id)

    def list(self) -> list[Target]:
        """Live targets, oldest first."""
        return sorted(self._targets.values(), key=lambda t: (t.created_at, t.id))

    def __len__(self) -> int:
        return len(self._targets)

    # --- derived state --------------------------------------------------------------
    def _threshold(self, target: Target, vectors: np.ndarray) -> float:
        scores = self.corpus.prompt_scores(vectors, self.threshold_config.benign_weight)
        own = AliasMatcher()
        own.add(target.id, matcher_aliases(target.spec))
        about = np.array([bool(own.find(p)) for p in self.corpus.prompts], dtype=bool)
        return calibrate_threshold(scores, about, self.threshold_config)

    def _enforce(self, target: Target, vectors: np.ndarray) -> None:
        self.index.add(target.id, vectors)
        self.aliases.add(target.id, matcher_aliases(target.spec))
        self._targets[target.id] = target

    # --- writes ---------------------------------------------------------------------
    def load(self) -> builtins.list[Target]:
        """Rebuild the in-memory index from the store (at start-up)."""
        targets = self.store.list()
        for target in targets:
            self._enforce(target, self.embedder.encode(target.vector_texts()))
        logger.info("registry loaded: %d targets, %d vectors", len(targets), len(self.index))
        return targets

    def add(self, spec: TargetSpec) -> Target:
        """Register a target: calibrate, persist, then enforce."""
        target = Target(id=f"tgt_{uuid.uuid4().hex[:24]}", spec=spec, created_at=int(time.time()))
        vectors = self.embedder.encode(target.vector_texts())
        threshold = self._threshold(target, vectors)
        target = target.with_calibration(
            Calibration(threshold=threshold, eco_sigma=self.default_sigma)
        )
        with self._write_lock:
            self.store.add(target)
            self._enforce(target, vectors)
        logger.info("target %s registered (threshold %.3f)", target.id, threshold)
        return target

    def update_calibration(
        self, target_id: str, recalibrate: bool = False, **changes: Any
    ) -> Target | None:
        """Change fields of a target's derived state atomically (concurrent background jobs
        change different fields); with `recalibrate`, re-embed and recompute the threshold.
        None when the target is gone."""
        current = self._targets.get(target_id)
        if current is None:
            return None
        vectors = None
        threshold = None
        if recalibrate:
            probe = current.with_calibration(replace(current.calibration, **changes))
            vectors = self.embedder.encode(probe.vector_texts())
            threshold = self._threshold(probe, vectors)
        with self._write_lock:
            current = self._targets.get(target_id)
            if current is None:  # deleted meanwhile
                return None
            calibration = replace(current.calibration, **changes)
            if threshold is not None:
                calibration = replace(calibration, threshold=threshold)
            if not self.store.update_calibration(target_id, calibration):
                return None
            if vectors is not None:
                self.index.add(target_id, vectors)
            target = current.with_calibration(calibration)
            self._targets[target_id] = target
        return target

    def put_artifact(self, target_id: str, kind: str, data: bytes) -> bool:
        """Persist a live target's binary state; False when the target is gone."""
        with self._write_lock:
            if target_id not in self._targets:
                return False
            return self.store.put_artifact(target_id, kind, data)

    def artifact(self, target_id: str, kind: str) -> bytes | None:
        """A target's stored binary state (steering vectors, adapter weights), or None."""
        return self.store.get_artifact(target_id, kind)

    def remove(self, target_id: str) -> bool:
        """Delete a target; False when unknown."""
        with self._write_lock:
            removed = self.store.remove(target_id)
            known = self._targets.pop(target_id, None) is not None
            self.index.remove(target_id)
            self.aliases.remove(target_id)
        if removed or known:
            logger.info("target %s deleted", target_id)
        return removed or known
