"""Which chat requests the gateway intervened on, for operators.

A privacy operator who files a deletion request, or an SRE who load-tests the gateway, needs to
know per request whether the gateway acted: the chat client is never told, and the Prometheus
counters cannot say which request they counted. Each record holds the request id (the client's
X-Request-ID or the one the gateway made), the completion id, the stage that decided, the
action and the target ids: never prompt or answer text. Records are bounded
(`LETHE_INTERVENTION_LOG_SIZE`) and read through `GET /admin/interventions`: in memory for a
lone gateway (`InterventionLog`), in Redis when replicas share a registry
(`SharedInterventionLog`), so any replica answers for all of them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from typing import Protocol

import redis

from guards.redis_layout import INTERVENTION_RECORDS, INTERVENTION_SEQ, RECORD_INTERVENTIONS_SCRIPT
from guards.store import StoreUnavailable

logger = logging.getLogger(__name__)


class InterventionStage(StrEnum):
    """Which part of the gateway decided to intervene."""

    PROMPT = "prompt"  # the detector flagged the conversation: generated with the intervention
    ANSWER = "answer"  # the answer audit flagged the bare answer: re-generated with it
    STREAM = "stream"  # a streamed choice named a target past the look-ahead: cut off


@dataclass(frozen=True)
class Intervention:
    """One decision to act on a chat request, as the chat service reports it (no text)."""

    request_id: str
    completion_id: str
    stage: InterventionStage
    action: str
    target_ids: tuple[str, ...]

    @classmethod
    def of(
        cls,
        request_id: str,
        completion_id: str,
        stage: InterventionStage,
        action: str,
        target_ids: Iterable[str],
    ) -> Intervention:
        """An intervention with its target ids de-duplicated, in order."""
        return cls(request_id, completion_id, stage, action, tuple(dict.fromkeys(target_ids)))


@dataclass(frozen=True)
class InterventionRecord(Intervention):
    """An intervention as recorded: numbered in order and timed."""

    seq: int
    created_at: float  # unix time


@dataclass(frozen=True)
class InterventionPage:
    """One read of the record: up to `limit` records after a reader's `after`."""

    records: list[InterventionRecord]
    last_seq: int  # the newest record's seq (0: none yet)
    oldest_seq: int  # the oldest still held (last_seq + 1 when none is)
    has_more: bool


class InterventionRecorder(Protocol):
    """What the chat service records into and the admin API reads from."""

    def record(self, intervention: Intervention) -> None: ...

    def read(
        self, after: int = 0, limit: int = 100, request_id: str | None = None
    ) -> InterventionPage: ...

    def close(self) -> None: ...


def _page(
    records: list[InterventionRecord],
    after: int,
    limit: int,
    request_id: str | None,
    last_seq: int,
    oldest_seq: int,
) -> InterventionPage:
    out = [
        r for r in records if r.seq > after and (request_id is None or r.request_id == request_id)
    ]
    return InterventionPage(out[:limit], last_seq, oldest_seq, len(out) > limit)


class InterventionLog:
    """The last `capacity` intervened requests, numbered in order (`seq` starts at 1).

    Readers page with `after` (the last `seq` they saw); `oldest_seq` tells them whether the
    ring dropped records they had not read yet. Thread-safe: chat handlers record from the event
    loop and from worker threads.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._records: deque[InterventionRecord] = deque(maxlen=max(capacity, 1))
        self._lock = threading.Lock()
        self._seq = 0

    def record(self, intervention: Intervention) -> None:
        """Keep one record (nothing when the log is off, capacity 0)."""
        if self.capacity <= 0:
            return
        with self._lock:
            self._seq += 1
            self._records.append(
                InterventionRecord(**vars(intervention), seq=self._seq, created_at=time.time())
            )

    def read(
        self, after: int = 0, limit: int = 100, request_id: str | None = None
    ) -> InterventionPage:
        """Up to `limit` records with `seq > after`, oldest first, optionally of one request."""
        with self._lock:
            records = list(self._records)
            last = self._seq
        oldest = records[0].seq if records else last + 1
        return _page(records, after, limit, request_id, last, oldest)

    def close(self) -> None:
        """Nothing to release."""


class SharedInterventionLog:
    """The record in Redis, one for every replica of a shared registry (`LETHE_REGISTRY_URL`).

    A chat request only queues its record: a background thread writes queued records in
    batches, so a slow or unreachable Redis never delays an answer. While Redis is down the
    queue holds up to `capacity` records (the oldest are dropped past that, with a warning) and
    is written once Redis answers again; a record may then be written twice, which readers can
    tell by `request_id`. Reads go to Redis (StoreUnavailable while it is down).
    """

    def __init__(self, client: redis.Redis, capacity: int, retry_s: float = 1.0) -> None:
        self.client = client
        self.capacity = capacity
        self.retry_s = retry_s
        self._script = client.register_script(RECORD_INTERVENTIONS_SCRIPT)
        self._queue: deque[tuple[int, str]] = deque()  # (local number, record JSON)
        self._queued = 0
        self._cond = threading.Condition()
        self._dropped = 0
        self._closing = False
        self._thread = threading.Thread(
            target=self._write_loop, name="intervention-record", daemon=True
        )
        self._thread.start()

    def record(self, intervention: Intervention) -> None:
        """Queue one record for Redis (nothing when the record is off, capacity 0)."""
        if self.capacity <= 0:
            return
        body = json.dumps({**vars(intervention), "created_at": time.time()})
        with self._cond:
            if len(self._queue) >= self.capacity:
                self._queue.popleft()
                self._dropped += 1
            self._queued += 1
            self._queue.append((self._queued, body))
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
        return _page(records, after, limit, request_id, last_seq, oldest_seq)

    def close(self) -> None:
        """Write what is queued (briefly) and stop the writer."""
        self.flush(timeout_s=2.0)
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=5.0)
        self.client.close()

    def _write_loop(self) -> None:
        failing = False
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                batch = list(islice(self._queue, 256))
            try:
                self._script(
                    keys=[INTERVENTION_SEQ, INTERVENTION_RECORDS],
                    args=[self.capacity, *(body for _, body in batch)],
                )
            except Exception as exc:  # Redis down, or anything else: the writer must live on
                if not failing:  # once per outage, not once per retry
                    logger.warning("intervention record: Redis write failed, retrying (%s)", exc)
                failing = True
                # Wait out the retry interval: new records must not each trigger a retry.
                deadline = time.monotonic() + self.retry_s
                with self._cond:
                    while not self._closing and (left := deadline - time.monotonic()) > 0:
                        self._cond.wait(left)
                continue
            if failing:
                logger.info("intervention record: Redis writes resumed")
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
                    "(queue full: Redis slow or down)",
                    dropped,
                )


def _decode(member: bytes | str) -> InterventionRecord:
    text = member.decode() if isinstance(member, bytes) else member
    seq, _, body = text.partition(" ")
    data = json.loads(body)
    return InterventionRecord(
        seq=int(seq),
        created_at=float(data["created_at"]),
        request_id=str(data["request_id"]),
        completion_id=str(data["completion_id"]),
        stage=InterventionStage(data["stage"]),
        action=str(data["action"]),
        target_ids=tuple(data["target_ids"]),
    )
