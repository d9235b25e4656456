"""Replication of the shared registry: one replica's `Registry` kept in step with Redis.

Every write to the shared store is one atomic step that takes the next registry version and
appends an entry to the change log (guards/redis_store.py). Each replica runs one
`RegistrySync` thread that reads the log with a blocking XREAD and applies each change to its
in-memory registry (index, alias matcher, targets) without writing back:

- versions must arrive one by one: a gap (a trimmed log, a lost write) triggers a resync, which
  compares every target's version in Redis with the one this replica holds and reloads the
  changed targets (record, vectors, artifacts) and drops the deleted ones;
- a change is applied only if it is newer than what this replica already holds (its own write
  may have overtaken it), checked under the registry's write lock;
- when Redis is unreachable the replica keeps enforcing what it has, reports how stale it is
  (seconds since it last knew it was in sync), retries with a capped backoff and resyncs as soon
  as Redis answers again;
- if Redis comes back *without* the registry (a new epoch, or a lower version: its data was
  lost), the replica keeps every target it enforces, takes in what Redis holds, and reports the
  reset until it restarts: dropping targets because a server lost its disk would silently undo
  deletion requests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import redis

from guards.redis_layout import Change, Snapshot
from guards.redis_store import SOCKET_TIMEOUT_S, RedisTargetStore
from guards.registry import Registry
from guards.store import StoreUnavailable
from guards.targets import Target

logger = logging.getLogger(__name__)

READ_COUNT = 512


@dataclass(frozen=True)
class SyncStatus:
    """What /health reports about replication."""

    replica: str
    connected: bool
    version: int
    staleness_s: float
    resyncs: int
    last_error: str | None
    reset: str | None  # set once Redis was found without the registry this replica had


class RegistrySync:
    """Applies the shared registry's change log to one replica's registry, in a thread.

    Example:
        >>> sync = RegistrySync(registry, store)  # doctest: +SKIP
        >>> sync.load()  # at start-up: every target in Redis, enforced  # doctest: +SKIP
        >>> sync.start()  # then follow the change log  # doctest: +SKIP
    """

    def __init__(
        self,
        registry: Registry,
        store: RedisTargetStore,
        *,
        block_ms: int = 1000,
        retry_s: float = 0.2,
        max_retry_s: float = 2.0,
        on_lag: Callable[[float], None] | None = None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.block_ms = block_ms
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.on_lag = on_lag
        self._client: redis.Redis | None = None
        self.version = 0
        self._stream_id = "0-0"
        self._epoch: str | None = None
        self._last_sync = time.monotonic()
        self._connected = False
        self._last_error: str | None = None
        self._reset: str | None = None
        self.resyncs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- state --------------------------------------------------------------------------
    def staleness_s(self) -> float:
        """Seconds since this replica last knew it held every change in Redis."""
        return max(0.0, time.monotonic() - self._last_sync)

    def status(self) -> SyncStatus:
        """Replication state for /health."""
        return SyncStatus(
            replica=self.store.origin,
            connected=self._connected,
            version=self.version,
            staleness_s=round(self.staleness_s(), 3),
            resyncs=self.resyncs,
            last_error=self._last_error,
            reset=self._reset,
        )

    def _in_sync(self, as_of: float) -> None:
        self._last_sync = max(self._last_sync, as_of)
        if not self._connected:
            logger.info("shared registry reachable again at version %d", self.version)
        self._connected = True
        self._last_error = None

    # --- loading and resync -------------------------------------------------------------
    def load(self) -> int:
        """Enforce every target in Redis (blocking: at start-up, before `start`). Returns the
        number of targets."""
        started = time.monotonic()
        snap = self.store.snapshot()
        records = self.store.list_records()
        blobs = self.store.vectors_many([r.target.id for r in records])
        for record, blob in zip(records, blobs, strict=True):
            self._apply(record.target.id, record.version, record.target, blob)
        for target_id, version in snap.artifacts.items():
            self.store.note_artifacts(target_id, version)
        self._position(snap)
        self._in_sync(started)
        logger.info(
            "shared registry loaded: version %d, %d targets, %d vectors",
            snap.version,
            len(records),
            len(self.registry.index),
        )
        return len(records)

    def _position(self, snap: Snapshot) -> None:
        self.version = snap.version
        self._stream_id = snap.stream_id
        self._epoch = snap.epoch

    def resync(self) -> None:
        """Reload what changed since this replica was last in step, drop what was deleted."""
        started = time.monotonic()
        snap = self.store.snapshot()
        merge = self._reset_detected(snap)
        if merge:
            snap = self.store.snapshot()
        if not merge:
            for target in self.registry.list():
                if target.id not in snap.versions:
                    # Deleted in Redis, unless this replica wrote it after the snapshot.
                    self.registry.forget(
                        target.id, is_current=partial(self._known_before, target.id, snap.version)
                    )
        reloaded = 0
        for target_id, version in snap.versions.items():
            if version > self.store.seen_version(target_id):
                reloaded += self._refresh(target_id)
        for target_id, version in snap.artifacts.items():
            if version > self.store.seen_artifacts(target_id):
                for kind in self.store.artifact_kinds(target_id):
                    self.registry.artifact_changed(target_id, kind)
                self.store.note_artifacts(target_id, version)
        self._position(snap)
        self.resyncs += 1
        self._in_sync(started)
        logger.info(
            "shared registry resynced at version %d: %d targets reloaded", snap.version, reloaded
        )

    def _known_before(self, target_id: str, version: int) -> bool:
        return self.store.seen_version(target_id) <= version

    def _reset_detected(self, snap: Snapshot) -> bool:
        if self._epoch is None or (snap.epoch == self._epoch and snap.version >= self.version):
            return False
        self._reset = (
            f"the registry in Redis was reset (epoch {self._epoch} -> {snap.epoch}, version "
            f"{self.version} -> {snap.version}): this replica keeps enforcing its "
            f"{len(self.registry)} targets and takes in those Redis holds; restore Redis from "
            f"its backup or re-register the targets, then restart the replicas"
        )
        logger.error("%s", self._reset)
        self.store.forget_versions()
        self.store.ensure_epoch()
        return True

    # --- applying changes ---------------------------------------------------------------
    def _apply(self, target_id: str, version: int, target: Target, blob: bytes | None) -> bool:
        vectors = None
        current = self.registry.get(target_id)
        if current is None or current.vector_texts() != target.vector_texts():
            vectors = self.registry.vectors_for(target, blob)
        applied = self.registry.apply(
            target, vectors, is_current=lambda: version > self.store.seen_version(target_id)
        )
        if applied:
            self.store.note_version(target_id, version)
        return applied

    def _refresh(self, target_id: str) -> int:
        """Fetch a target's current record and apply it; 1 when applied."""
        record = self.store.get_record(target_id, with_vectors=False)
        if record is None:
            return 0  # deleted since: its deletion is a later change
        current = self.registry.get(target_id)
        blob = None
        if current is None or current.vector_texts() != record.target.vector_texts():
            blob = self.store.get_vectors(target_id)
        return int(self._apply(target_id, record.version, record.target, blob))

    def handle(self, change: Change) -> bool:
        """Apply one change-log entry; False when it reveals a gap (a resync is needed)."""
        if change.version <= self.version:
            return True  # already covered (by a resync, or a snapshot at start-up)
        if change.version != self.version + 1:
            logger.warning(
                "shared registry: version gap %d -> %d, resyncing", self.version, change.version
            )
            return False
        target_id = change.target_id
        if change.op == "del":
            if change.version > self.store.seen_version(target_id):
                self.registry.forget(
                    target_id,
                    is_current=lambda: change.version > self.store.seen_version(target_id),
                )
                self.store.note_version(target_id, change.version)
        elif change.op in ("put", "cal"):
            if change.version > self.store.seen_version(target_id):
                self._refresh(target_id)
        elif change.op == "art":
            # Checked under the registry's lock: this replica's own artifact write notes its
            # version before it releases the lock.
            self.registry.artifact_changed(
                target_id,
                change.kind,
                is_current=lambda: change.version > self.store.seen_artifacts(target_id),
            )
            self.store.note_artifacts(target_id, change.version)
        self.version = change.version
        self._stream_id = change.stream_id
        if change.origin != self.store.origin and self.on_lag is not None:
            self.on_lag(max(0.0, time.time() - change.committed_at))
        return True

    # --- the thread ---------------------------------------------------------------------
    def start(self) -> None:
        """Follow the change log in a daemon thread (after `load`)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="lethe-registry-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop following the log (the blocking read ends within block_ms)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self.block_ms / 1000 + 6)
            self._thread = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _reader(self) -> redis.Redis:
        # A connection of its own: a blocking read holds it for up to block_ms. Its name lets
        # an operator (or a test) find it in CLIENT LIST.
        if self._client is None:
            self._client = self.store.client_for(
                self.store.url,
                socket_timeout=self.block_ms / 1000 + SOCKET_TIMEOUT_S,
                client_name=f"lethe-sync-{self.store.origin}",
            )
        return self._client

    def step(self) -> int:
        """One blocking read of the change log and its application; the number of changes.
        Raises StoreUnavailable when Redis cannot be reached."""
        started = time.monotonic()
        changes = self.store.read_changes(
            self._reader(), self._stream_id, self.block_ms, READ_COUNT
        )
        received = time.monotonic()
        for change in changes:
            if not self.handle(change):
                self.resync()
                return len(changes)
        if not changes:
            # Nothing new in the log: the version must be ours, else a change was lost (or
            # the log trimmed past us, or Redis reset) and only a resync finds it.
            if self.store.head() != (self.version, self._epoch):
                logger.warning("shared registry: version moved without a change-log entry")
                self.resync()
                return 0
            self._in_sync(received)  # Redis answered "nothing new" just now
        elif len(changes) < READ_COUNT:
            self._in_sync(started)
        return len(changes)

    def _run(self) -> None:
        resync = False
        delay = self.retry_s
        while not self._stop.is_set():
            try:
                if resync:
                    self.resync()
                    resync = False
                self.step()
                delay = self.retry_s
            except StoreUnavailable as exc:
                if self._connected:
                    logger.warning(
                        "shared registry unreachable, enforcing version %d: %s", self.version, exc
                    )
                self._connected = False
                self._last_error = str(exc)
                resync = True
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_retry_s)
            except Exception as exc:
                logger.exception("shared registry sync failed; resyncing")
                self._last_error = f"{type(exc).__name__}: {exc}"
                resync = True
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_retry_s)
