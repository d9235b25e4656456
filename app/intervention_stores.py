"""Durable records of intervened requests: SQLite beside a lone gateway's registry, Redis
shared by replicas.

A chat request only queues its record: a background thread writes queued records in batches,
so a slow disk or an unreachable Redis never delays an answer. While the store fails, the
queue holds up to `capacity` records (the oldest are dropped past that, with a warning) and is
written once the store answers again.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from itertools import islice
from pathlib import Path

import redis

from app.interventions import (
    Intervention,
    InterventionPage,
    InterventionRecord,
    InterventionStage,
    page_of,
)
from guards.redis_layout import INTERVENTION_RECORDS, INTERVENTION_SEQ, RECORD_INTERVENTIONS_SCRIPT
from guards.store import StoreError, StoreUnavailable

logger = logging.getLogger(__name__)

_WRITE_BATCH = 256  # records per write: one Lua call or one SQLite transaction
_SQLITE_MAX_INT = 2**63 - 1


class QueuedInterventionLog(ABC):
    """The writer half every durable record shares: a queue drained by a background thread.

    Subclasses say how a batch is written (`_write`) and read back (`read`).
    """

    store_name = "store"  # for log lines

    def __init__(self, capacity: int, retry_s: float) -> None:
        self.capacity = capacity
        self.retry_s = retry_s
        self._queue: deque[tuple[int, Intervention, float]] = deque()  # (local number, ..., time)
        self._queued = 0
        self._cond = threading.Condition()
        self._dropped = 0
        self._closing = False
        self._thread = threading.Thread(
            target=self._write_loop, name="intervention-record", daemon=True
        )
        self._thread.start()

    @abstractmethod
    def _write(self, batch: list[tuple[Intervention, float]]) -> None:
        """Store one batch of (intervention, unix time), oldest first, in one step."""

    @abstractmethod
    def _release(self) -> None:
        """Close the connection once the writer has stopped."""

    def record(self, intervention: Intervention) -> None:
        """Queue one record (nothing when the record is off, capacity 0)."""
        if self.capacity <= 0:
            return
        with self._cond:
            if len(self._queue) >= self.capacity:
                self._queue.popleft()
                self._dropped += 1
            self._queued += 1
            self._queue.append((self._queued, intervention, time.time()))
            self._cond.notify()

    def flush(self, timeout_s: float = 2.0) -> bool:
        """Wait until every queued record is written; whether that happened in time."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self) -> None:
        """Write what is queued (briefly), stop the writer and close the connection."""
        self.flush(timeout_s=2.0)
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=5.0)
        self._release()

    def _write_loop(self) -> None:
        failing = False
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                batch = list(islice(self._queue, _WRITE_BATCH))
            try:
                self._write([(i, at) for _, i, at in batch])
            except Exception as exc:  # store down, disk full, ...: the writer must live on
                if not failing:  # once per outage, not once per retry
                    logger.warning(
                        "intervention record: %s write failed, retrying (%s)", self.store_name, exc
                    )
                failing = True
                # Wait out the retry interval: new records must not each trigger a retry.
                deadline = time.monotonic() + self.retry_s
                with self._cond:
                    while not self._closing and (left := deadline - time.monotonic()) > 0:
                        self._cond.wait(left)
                continue
            if failing:
                logger.info("intervention record: %s writes resumed", self.store_name)
                failing = False
            with self._cond:
                # Records overflowing the queue meanwhile left from the front: drop by number.
                while self._queue and self._queue[0][0] <= batch[-1][0]:
                    self._queue.popleft()
                dropped, self._dropped = self._dropped, 0
                self._cond.notify_all()
            if dropped:
                logger.warning(
                    "intervention record: %d records dropped before they could be written "
                    "(queue full: %s slow or failing)",
                    dropped,
                    self.store_name,
                )


class SharedInterventionLog(QueuedInterventionLog):
    """The record in Redis, one for every replica of a shared registry (`LETHE_REGISTRY_URL`).

    Any replica answers for all. After a lost reply a retried write may record a request twice,
    which readers can tell by `request_id`. Reads go to Redis (StoreUnavailable while it is down).
    """

    store_name = "Redis"

    def __init__(self, client: redis.Redis, capacity: int, retry_s: float = 1.0) -> None:
        self.client = client
        self._script = client.register_script(RECORD_INTERVENTIONS_SCRIPT)
        super().__init__(capacity, retry_s)

    def _write(self, batch: list[tuple[Intervention, float]]) -> None:
        bodies = [json.dumps({**vars(i), "created_at": at}) for i, at in batch]
        self._script(keys=[INTERVENTION_SEQ, INTERVENTION_RECORDS], args=[self.capacity, *bodies])

    def _release(self) -> None:
        self.client.close()

    def read(
        self, after: int = 0, limit: int = 100, request_id: str | None = None
    ) -> InterventionPage:
        """A page of the shared record (this replica's queued records written first)."""
        self.flush(timeout_s=1.0)
        low = f"({after}"
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.get(INTERVENTION_SEQ)
            pipe.zrange(INTERVENTION_RECORDS, 0, 0, withscores=True)
            if request_id is None:
                pipe.zrangebyscore(INTERVENTION_RECORDS, low, "+inf", start=0, num=limit + 1)
            else:
                pipe.zrangebyscore(INTERVENTION_RECORDS, low, "+inf")
            last, oldest, members = pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the intervention record is unreachable ({exc})") from exc
        last_seq = int(last or 0)
        oldest_seq = int(oldest[0][1]) if oldest else last_seq + 1
        records = [_decode(m) for m in members]
        return page_of(records, after, limit, request_id, last_seq, oldest_seq)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS interventions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: numbers are never reused
    created_at REAL NOT NULL,
    request_id TEXT NOT NULL,
    completion_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    action TEXT NOT NULL,
    target_ids TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS interventions_by_request ON interventions (request_id, seq);
"""


class SqliteInterventionLog(QueuedInterventionLog):
    """The record of a lone gateway in a SQLite file beside its registry: it survives restarts
    and crashes, and numbering goes on where it stopped.

    Example:
        >>> log = SqliteInterventionLog(Path("/tmp/r.interventions.db"), 100)  # doctest: +SKIP
    """

    store_name = "SQLite"

    def __init__(self, path: Path, capacity: int, retry_s: float = 1.0) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread=False: the writer thread and readers share it under self._lock.
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise StoreError(f"intervention record {path} is not usable: {exc}") from exc
        super().__init__(capacity, retry_s)

    def _write(self, batch: list[tuple[Intervention, float]]) -> None:
        rows = [
            (at, i.request_id, i.completion_id, str(i.stage), i.action, json.dumps(i.target_ids))
            for i, at in batch
        ]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT INTO interventions (created_at, request_id, completion_id, stage, "
                    "action, target_ids) VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self._conn.execute(
                    "DELETE FROM interventions WHERE seq <= "
                    "(SELECT max(seq) FROM interventions) - ?",
                    (self.capacity,),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _release(self) -> None:
        with self._lock:
            self._conn.close()

    def read(
        self, after: int = 0, limit: int = 100, request_id: str | None = None
    ) -> InterventionPage:
        """A page of the record (queued records written first)."""
        self.flush(timeout_s=1.0)
        after = min(after, _SQLITE_MAX_INT)  # past it no record can exist; SQLite would raise
        where = "seq > ?" if request_id is None else "seq > ? AND request_id = ?"
        params: tuple[object, ...] = (after,) if request_id is None else (after, request_id)
        try:
            with self._lock:
                last = self._conn.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'interventions'"
                ).fetchone()
                (oldest,) = self._conn.execute("SELECT min(seq) FROM interventions").fetchone()
                rows = self._conn.execute(
                    "SELECT seq, created_at, request_id, completion_id, stage, action, target_ids "
                    f"FROM interventions WHERE {where} ORDER BY seq LIMIT ?",
                    (*params, limit + 1),
                ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"the intervention record is unreadable ({exc})") from exc
        last_seq = int(last[0]) if last else 0
        records = [
            _record_of(seq, at, rid, cid, stage, action, json.loads(ids))
            for seq, at, rid, cid, stage, action, ids in rows
        ]
        oldest_seq = int(oldest) if oldest is not None else last_seq + 1
        return page_of(records, after, limit, request_id, last_seq, oldest_seq)


def _decode(member: bytes | str) -> InterventionRecord:
    text = member.decode() if isinstance(member, bytes) else member
    seq, _, body = text.partition(" ")
    return _record_of(int(seq), **json.loads(body))


def _record_of(
    seq: int,
    created_at: float,
    request_id: str,
    completion_id: str,
    stage: str,
    action: str,
    target_ids: list[str],
) -> InterventionRecord:
    return InterventionRecord(
        seq=int(seq),
        created_at=float(created_at),
        request_id=str(request_id),
        completion_id=str(completion_id),
        stage=InterventionStage(stage),
        action=str(action),
        target_ids=tuple(target_ids),
    )
