"""The durable records of intervened requests: SQLite beside a lone gateway's registry, and the
one replicas share in a real Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _redis_server import RedisServer

from app.intervention_stores import (
    QueuedInterventionLog,
    SharedInterventionLog,
    SqliteInterventionLog,
)
from app.interventions import Intervention, InterventionStage
from guards.redis_store import RedisTargetStore
from guards.store import StoreError, StoreUnavailable

OpenLog = Callable[[int], QueuedInterventionLog]


def _redis_log(url: str, capacity: int = 100) -> SharedInterventionLog:
    return SharedInterventionLog(RedisTargetStore.client_for(url), capacity, retry_s=0.1)


@pytest.fixture(params=["sqlite", "redis"])
def open_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenLog]:
    """Opens logs on one store: each call is another replica (Redis) or a restart (SQLite)."""
    opened: list[QueuedInterventionLog] = []

    def open_one(capacity: int = 100) -> QueuedInterventionLog:
        if request.param == "redis":
            log: QueuedInterventionLog = _redis_log(request.getfixturevalue("redis_url"), capacity)
        else:
            log = SqliteInterventionLog(tmp_path / "registry.interventions.db", capacity)
        opened.append(log)
        return log

    yield open_one
    for log in opened:
        log.close()


def _intervention(
    request_id: str, stage: InterventionStage = InterventionStage.PROMPT
) -> Intervention:
    return Intervention.of(request_id, f"chatcmpl-{request_id}", stage, "eco", ["t1", "t1"])


def test_records_are_numbered_paged_and_filtered(open_log: OpenLog) -> None:
    a, b = open_log(100), open_log(100)
    a.record(_intervention("r1"))
    assert a.flush()
    b.record(_intervention("r2", InterventionStage.ANSWER))
    assert b.flush()
    page = a.read()
    assert [(r.seq, r.request_id, r.stage, r.target_ids) for r in page.records] == [
        (1, "r1", InterventionStage.PROMPT, ("t1",)),
        (2, "r2", InterventionStage.ANSWER, ("t1",)),
    ]
    assert page.records[0].completion_id == "chatcmpl-r1" and page.records[0].created_at > 0
    assert (page.last_seq, page.oldest_seq, page.has_more) == (2, 1, False)
    assert [r.seq for r in b.read(after=1).records] == [2]
    assert [r.seq for r in b.read(request_id="r1").records] == [1]
    assert b.read(request_id="absent").records == []
    first = b.read(limit=1)
    assert [r.seq for r in first.records] == [1] and first.has_more


def test_the_record_keeps_the_newest_capacity_records(open_log: OpenLog) -> None:
    log = open_log(3)
    for i in range(5):
        log.record(_intervention(f"r{i}"))
        assert log.flush()  # the queue itself holds `capacity` records too
    page = log.read()
    assert [r.seq for r in page.records] == [3, 4, 5]
    assert (page.oldest_seq, page.last_seq) == (3, 5)


def test_an_empty_record_says_so(open_log: OpenLog) -> None:
    page = open_log(10).read()
    assert (page.records, page.last_seq, page.oldest_seq, page.has_more) == ([], 0, 1, False)


def test_paging_past_any_integer_the_store_holds_is_an_empty_page(open_log: OpenLog) -> None:
    log = open_log(10)
    log.record(_intervention("r1"))
    assert log.flush()
    page = log.read(after=10**30)  # the route accepts any non-negative integer
    assert page.records == [] and page.last_seq == 1


def test_sqlite_record_survives_a_restart_and_numbering_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "registry.interventions.db"
    first = SqliteInterventionLog(path, 100)
    first.record(_intervention("before"))
    first.close()  # writes what is queued
    second = SqliteInterventionLog(path, 100)
    try:
        second.record(_intervention("after"))
        assert second.flush()
        assert [(r.seq, r.request_id) for r in second.read().records] == [
            (1, "before"),
            (2, "after"),
        ]
    finally:
        second.close()


def test_sqlite_record_on_a_corrupt_file_fails_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "registry.interventions.db"
    path.write_bytes(b"this is not a database" * 256)
    with pytest.raises(StoreError) as err:
        SqliteInterventionLog(path, 100)
    assert str(path) in str(err.value)


def test_records_made_while_redis_is_down_are_written_when_it_is_back(
    private_redis: RedisServer,
) -> None:
    log = _redis_log(private_redis.url())
    try:
        private_redis.stop(kill=True)
        # Never blocks the chat request that records it.
        log.record(Intervention.of("during", "c1", InterventionStage.PROMPT, "refuse", ["t1"]))
        assert not log.flush(timeout_s=0.3)
        with pytest.raises(StoreUnavailable):
            log.read()
        private_redis.start()
        assert log.flush(timeout_s=10)
        assert [r.request_id for r in log.read().records] == ["during"]
    finally:
        log.close()
