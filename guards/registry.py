"""The live registry: durable store plus the in-memory index and alias matcher that enforce it."""

from __future__ import annotations

import builtins
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from guards.aliases import AliasMatcher, KeyedTexts
from guards.calibration import BenignCorpus, ThresholdConfig, calibrate_threshold
from guards.crosslingual import CrossLingualChannel, CrossLingualEntry
from guards.embedder import Embedder, Vectors
from guards.index import FaissVectorIndex, VectorIndex
from guards.store import TargetStore
from guards.targets import Calibration, Target, TargetSpec
from guards.vector_blob import pack_vectors, unpack_vectors

logger = logging.getLogger(__name__)


def matcher_aliases(spec: TargetSpec) -> list[str]:
    """Strings whose mention in a conversation flags the target: name, aliases, redact strings."""
    return [*spec.all_aliases(), *spec.redact]


@dataclass(frozen=True)
class RegistryEvent:
    """A change the registry took from elsewhere (another replica), once it is enforced.

    `put`: the target is new or its spec/calibration changed; `remove`: it is gone; `artifact`:
    its stored artifact `artifact` (steering vectors, LoRA weights) changed.
    """

    kind: Literal["put", "remove", "artifact"]
    target_id: str
    artifact: str | None = None


RegistryListener = Callable[[RegistryEvent], None]


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
        crosslingual: CrossLingualChannel | None = None,
    ) -> None:
        self.store = store
        self.crosslingual = crosslingual
        self.embedder = embedder
        self.corpus = corpus
        self.threshold_config = threshold_config
        self.default_sigma = default_sigma
        self.index: VectorIndex = index or FaissVectorIndex(embedder.dim)
        self.aliases = AliasMatcher()
        self._targets: dict[str, Target] = {}
        self._write_lock = threading.Lock()
        self._listeners: list[RegistryListener] = []
        self._corpus_keys: KeyedTexts | None = None  # built on the first registration
        self._corpus_keys_lock = threading.Lock()
        # Fact term -> ids of the targets that have it. Values are replaced, never mutated,
        # so request threads can read them while a write lands; a request looks up its own
        # words, never walks every target (at 20k targets a walk cost ~10 ms).
        self._fact_owners: dict[str, frozenset[str]] = {}
        # Never-emit strings of the targets that have any, and their concatenation, which
        # every chat request reads: rebuilt only when a target with redact strings comes or
        # goes (calibration progress writes to a target many times and must not rebuild it).
        self._redact_of: dict[str, tuple[str, ...]] = {}
        self._redact: tuple[str, ...] = ()

    # --- reads ----------------------------------------------------------------------
    def get(self, target_id: str) -> Target | None:
        """A live target by id."""
        return self._targets.get(target_id)

    def list(self) -> list[Target]:
        """Live targets, oldest first."""
        return sorted(self._targets.values(), key=lambda t: (t.created_at, t.id))

    def __len__(self) -> int:
        return len(self._targets)

    def fact_owners(self, term: str) -> frozenset[str]:
        """Ids of the live targets that have `term` (casefolded) among their fact terms."""
        return self._fact_owners.get(term, frozenset())

    def fact_targets(self) -> tuple[Target, ...]:
        """Live targets that have fact terms."""
        ids = {i for owners in list(self._fact_owners.values()) for i in owners}
        return tuple(t for i in sorted(ids) if (t := self._targets.get(i)) is not None)

    def redact_strings(self) -> tuple[str, ...]:
        """Every live target's never-emit strings (in no particular order)."""
        return self._redact

    def _put(self, target: Target) -> None:
        """Make `target` live (under the write lock)."""
        old = self._targets.get(target.id)
        self._targets[target.id] = target
        self._index_facts(target.id, old, target)
        self._index_redact(target.id, target.spec.redact)

    def _drop(self, target_id: str) -> bool:
        """Make a target no longer live (under the write lock); whether it was."""
        old = self._targets.pop(target_id, None)
        self._index_facts(target_id, old, None)
        self._index_redact(target_id, ())
        self._unenforce(target_id)
        return old is not None

    def _index_redact(self, target_id: str, strings: tuple[str, ...]) -> None:
        if self._redact_of.get(target_id, ()) == strings:
            return
        if strings:
            self._redact_of[target_id] = strings
        else:
            self._redact_of.pop(target_id, None)
        # Replaced, never mutated: request threads read it without the lock.
        self._redact = tuple(s for owned in self._redact_of.values() for s in owned)

    def _index_facts(self, target_id: str, old: Target | None, new: Target | None) -> None:
        before = set(old.calibration.fact_terms) if old is not None else set()
        after = set(new.calibration.fact_terms) if new is not None else set()
        for term in before - after:
            owners = self._fact_owners.get(term, frozenset()) - {target_id}
            if owners:
                self._fact_owners[term] = owners
            else:
                self._fact_owners.pop(term, None)
        for term in after - before:
            self._fact_owners[term] = self._fact_owners.get(term, frozenset()) | {target_id}

    # --- listeners --------------------------------------------------------------------
    def add_listener(self, listener: RegistryListener) -> None:
        """Call `listener` after every change applied from elsewhere (`apply`, `forget`,
        `artifact_changed`); this registry's own writes do not call it. Listeners run on the
        thread that applied the change and must not raise."""
        self._listeners.append(listener)

    def _notify(self, event: RegistryEvent) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("registry listener failed on %s %s", event.kind, event.target_id)

    # --- derived state --------------------------------------------------------------
    def _threshold(
        self, target: Target, vectors: np.ndarray, about: np.ndarray | None = None
    ) -> float:
        config = self.threshold_config
        scores = self.corpus.prompt_scores(
            vectors, config.benign_weight, target.vocabulary, config.foreign_name_penalty
        )
        if about is None:
            about = self._about(target)
        return calibrate_threshold(scores, about, self.threshold_config)

    def _about(self, target: Target) -> np.ndarray:
        """Which corpus prompts name the target (they never count as its false positives)."""
        own = AliasMatcher()
        own.add(target.id, matcher_aliases(target.spec))
        with self._corpus_keys_lock:
            if self._corpus_keys is None:
                self._corpus_keys = KeyedTexts(self.corpus.prompts)
        # Only corpus prompts that share an index key with the aliases can mention them.
        about = np.zeros(len(self.corpus.prompts), dtype=bool)
        for i in self._corpus_keys.candidates(own.keys()):
            about[i] = bool(own.find(self.corpus.prompts[i]))
        return about

    def _crosslingual_entry(
        self, target: Target, about: np.ndarray | None = None
    ) -> CrossLingualEntry | None:
        if self.crosslingual is None:
            return None
        if about is None:
            about = self._about(target)
        return self.crosslingual.prepare(target.spec, about)

    def _enforce_spec(self, target: Target, entry: CrossLingualEntry | None) -> None:
        """Enforce what derives from the spec alone: aliases and the cross-lingual entry."""
        self.aliases.add(target.id, matcher_aliases(target.spec))
        if self.crosslingual is not None and entry is not None:
            self.crosslingual.add(target.id, entry)

    def _unenforce(self, target_id: str) -> None:
        self.index.remove(target_id)
        self.aliases.remove(target_id)
        if self.crosslingual is not None:
            self.crosslingual.remove(target_id)

    def _enforce(
        self, target: Target, vectors: np.ndarray, entry: CrossLingualEntry | None
    ) -> None:
        self.index.add(target.id, vectors)
        self._enforce_spec(target, entry)
        self._put(target)

    def _pack(self, target: Target, vectors: Vectors) -> bytes:
        return pack_vectors(vectors, self.embedder.name, target.vector_texts())

    def stored_vectors(self, target: Target, blob: bytes | None) -> Vectors | None:
        """The target's vectors from a store's packed blob, when they embed its current texts
        with this registry's embedder; None otherwise (embed them instead)."""
        if blob is None:
            return None
        return unpack_vectors(blob, self.embedder.name, target.vector_texts())

    def vectors_for(self, target: Target, blob: bytes | None = None) -> Vectors:
        """The target's index vectors: from `blob` when it is current, else embedded."""
        vectors = self.stored_vectors(target, blob)
        if vectors is None:
            vectors = self.embedder.encode(target.vector_texts())
        return vectors

    # --- writes ---------------------------------------------------------------------
    def load(self) -> builtins.list[Target]:
        """Rebuild the in-memory index from the store (at start-up)."""
        targets = self.store.list()
        for target in targets:
            vectors = self.vectors_for(target, self.store.get_vectors(target.id))
            self._enforce(target, vectors, self._crosslingual_entry(target))
        logger.info("registry loaded: %d targets, %d vectors", len(targets), len(self.index))
        return targets

    def add(self, spec: TargetSpec) -> Target:
        """Register a target: calibrate, persist, then enforce."""
        target = Target(id=f"tgt_{uuid.uuid4().hex[:24]}", spec=spec, created_at=time.time())
        vectors = self.embedder.encode(target.vector_texts())
        about = self._about(target)  # both thresholds leave out the same corpus prompts
        threshold = self._threshold(target, vectors, about)
        target = target.with_calibration(
            Calibration(threshold=threshold, eco_sigma=self.default_sigma)
        )
        entry = self._crosslingual_entry(target, about)
        with self._write_lock:
            self.store.add(target, vectors=self._pack(target, vectors))
            self._enforce(target, vectors, entry)
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
            target = current.with_calibration(calibration)
            blob = None if vectors is None else self._pack(target, vectors)
            if not self.store.update_calibration(target_id, calibration, vectors=blob):
                return None
            if vectors is not None:
                self.index.add(target_id, vectors)
            self._put(target)
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
            known = self._drop(target_id)
        if removed or known:
            logger.info("target %s deleted", target_id)
        return removed or known

    # --- changes made elsewhere -------------------------------------------------------
    def apply(
        self,
        target: Target,
        vectors: Vectors | None = None,
        *,
        is_current: Callable[[], bool] | None = None,
    ) -> bool:
        """Enforce a target as another replica stored it, without writing to the store.

        `vectors` are its index vectors (embedded here when None and its texts changed).
        `is_current`, called under the write lock, says whether this state is still the newest
        this replica knows (a local write may have overtaken it); False skips the change.
        Listeners hear a `put` once it is enforced. Returns whether it was applied.

        Example:
            >>> registry.apply(target_from_another_replica)  # doctest: +SKIP
            True
        """
        current = self._targets.get(target.id)
        texts = target.vector_texts()
        if vectors is None and (current is None or current.vector_texts() != texts):
            vectors = self.embedder.encode(texts)
        spec_changed = current is None or current.spec != target.spec
        entry = self._crosslingual_entry(target) if spec_changed else None
        with self._write_lock:
            if is_current is not None and not is_current():
                return False
            current = self._targets.get(target.id)
            if current is None or current.vector_texts() != texts:
                if vectors is None:  # its texts changed meanwhile
                    vectors = self.embedder.encode(texts)
                self.index.add(target.id, vectors)
            if current is None or current.spec != target.spec:
                if entry is None:  # its spec changed meanwhile
                    entry = self._crosslingual_entry(target)
                self._enforce_spec(target, entry)
            self._put(target)
        self._notify(RegistryEvent("put", target.id))
        return True

    def forget(self, target_id: str, *, is_current: Callable[[], bool] | None = None) -> bool:
        """Stop enforcing a target another replica deleted, without writing to the store;
        `is_current` as in `apply`. Listeners hear a `remove`. True when it was known here."""
        with self._write_lock:
            if is_current is not None and not is_current():
                return False
            known = self._drop(target_id)
        if known:
            self._notify(RegistryEvent("remove", target_id))
        return known

    def artifact_changed(
        self, target_id: str, kind: str, *, is_current: Callable[[], bool] | None = None
    ) -> bool:
        """Tell listeners that another replica stored a target's `kind` artifact; `is_current`
        as in `apply`. True when listeners were told."""
        with self._write_lock:
            if target_id not in self._targets or (is_current is not None and not is_current()):
                return False
        self._notify(RegistryEvent("artifact", target_id, kind))
        return True
