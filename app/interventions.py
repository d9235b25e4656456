"""Which chat requests this replica intervened on, for operators.

A privacy operator who files a deletion request, or an SRE who load-tests the gateway, needs to
know per request whether the gateway acted: the chat client is never told, and the Prometheus
counters cannot say which request they counted. Each record holds the request id (the client's
X-Request-ID or the one the gateway made), the completion id, the stage that decided, the
action and the target ids: never prompt or answer text. Records live in a bounded ring per
replica (`LETHE_INTERVENTION_LOG_SIZE`), read through `GET /admin/interventions`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class InterventionStage(StrEnum):
    """Which part of the gateway decided to intervene."""

    PROMPT = "prompt"  # the detector flagged the conversation: generated with the intervention
    ANSWER = "answer"  # the answer audit flagged the bare answer: re-generated with it
    STREAM = "stream"  # a streamed choice named a target past the look-ahead: cut off


@dataclass(frozen=True)
class InterventionRecord:
    """One intervened chat request (no text)."""

    seq: int
    at: float  # unix time
    request_id: str
    completion_id: str
    stage: InterventionStage
    action: str
    target_ids: tuple[str, ...]


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

    def record(
        self,
        request_id: str,
        completion_id: str,
        stage: InterventionStage,
        action: str,
        target_ids: Iterable[str],
    ) -> None:
        """Keep one record (nothing when the log is off, capacity 0)."""
        if self.capacity <= 0:
            return
        with self._lock:
            self._seq += 1
            self._records.append(
                InterventionRecord(
                    seq=self._seq,
                    at=time.time(),
                    request_id=request_id,
                    completion_id=completion_id,
                    stage=stage,
                    action=action,
                    target_ids=tuple(dict.fromkeys(target_ids)),
                )
            )

    @property
    def last_seq(self) -> int:
        """The `seq` of the newest record (0 before the first)."""
        return self._seq

    @property
    def oldest_seq(self) -> int:
        """The `seq` of the oldest record still held (last_seq + 1 when none is)."""
        with self._lock:
            return self._records[0].seq if self._records else self._seq + 1

    def page(
        self, after: int = 0, limit: int = 100, request_id: str | None = None
    ) -> list[InterventionRecord]:
        """Up to `limit` records with `seq > after`, oldest first, optionally of one request."""
        with self._lock:
            records = list(self._records)
        out: list[InterventionRecord] = []
        for rec in records:
            if rec.seq <= after or (request_id is not None and rec.request_id != request_id):
                continue
            out.append(rec)
            if len(out) >= limit:
                break
        return out
