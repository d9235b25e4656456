"""Which chat requests the gateway intervened on, for operators.

A privacy operator who files a deletion request, or an SRE who load-tests the gateway, needs to
know per request whether the gateway acted: the chat client is never told, and the Prometheus
counters cannot say which request they counted. Each record holds the request id (the client's
X-Request-ID or the one the gateway made), the completion id, the stage that decided, the
action and the target ids: never prompt or answer text. Records are bounded
(`LETHE_INTERVENTION_LOG_SIZE`) and read through `GET /admin/interventions`. This module holds
the record's types and the in-memory log; `app/intervention_stores.py` the durable ones (SQLite
beside a lone gateway's registry, Redis shared by replicas).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


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


def page_of(
    records: list[InterventionRecord],
    after: int,
    limit: int,
    request_id: str | None,
    last_seq: int,
    oldest_seq: int,
) -> InterventionPage:
    """The records after `after` (of one request, if given), at most `limit` of them."""
    out = [
        r for r in records if r.seq > after and (request_id is None or r.request_id == request_id)
    ]
    return InterventionPage(out[:limit], last_seq, oldest_seq, len(out) > limit)


class InterventionLog:
    """The last `capacity` intervened requests, numbered in order (`seq` starts at 1).

    Readers page with `after` (the last `seq` they saw); `oldest_seq` tells them whether the
    ring dropped records they had not read yet. Thread-safe: chat handlers record from the event
    loop and from worker threads. Kept in memory only: used when the record is off (capacity 0)
    and by embedders of `ChatService` that pass no recorder.
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
        return page_of(records, after, limit, request_id, last, oldest)

    def close(self) -> None:
        """Nothing to release."""
