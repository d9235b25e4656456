"""The record of intervened requests that replicas share in a real Redis."""

from __future__ import annotations

import pytest
from _redis_server import RedisServer

from app.interventions import Intervention, InterventionStage, SharedInterventionLog
from guards.redis_store import RedisTargetStore
from guards.store import StoreUnavailable


def _log(url: str, capacity: int = 100) -> SharedInterventionLog:
    return SharedInterventionLog(RedisTargetStore.client_for(url), capacity, retry_s=0.1)


def test_replicas_share_one_numbered_record(redis_url: str) -> None:
    a, b = _log(redis_url), _log(redis_url)
    try:
        a.record(Intervention.of("r1", "chatcmpl-1", InterventionStage.PROMPT, "eco", ["t1"]))
        assert a.flush()
        b.record(
            Intervention.of("r2", "chatcmpl-2", InterventionStage.ANSWER, "steer", ["t2", "t2"])
        )
        assert b.flush()
        page = a.read()
        assert [(r.seq, r.request_id, r.stage, r.target_ids) for r in page.records] == [
            (1, "r1", InterventionStage.PROMPT, ("t1",)),
            (2, "r2", InterventionStage.ANSWER, ("t2",)),
        ]
        assert (page.last_seq, page.oldest_seq, page.has_more) == (2, 1, False)
        assert [r.seq for r in b.read(after=1).records] == [2]
        assert [r.seq for r in b.read(request_id="r1").records] == [1]
        first = b.read(limit=1)
        assert [r.seq for r in first.records] == [1] and first.has_more
    finally:
        a.close()
        b.close()


def test_the_record_keeps_the_newest_capacity_records(redis_url: str) -> None:
    log = _log(redis_url, capacity=3)
    try:
        for i in range(5):
            log.record(Intervention.of(f"r{i}", f"c{i}", InterventionStage.PROMPT, "eco", []))
            assert log.flush()
        page = log.read()
        assert [r.seq for r in page.records] == [3, 4, 5]
        assert (page.oldest_seq, page.last_seq) == (3, 5)
    finally:
        log.close()


def test_records_made_while_redis_is_down_are_written_when_it_is_back(
    private_redis: RedisServer,
) -> None:
    log = _log(private_redis.url())
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
