"""The bounded per-replica record of intervened requests."""

from __future__ import annotations

from app.interventions import InterventionLog, InterventionStage


def _fill(log: InterventionLog, n: int) -> None:
    for i in range(n):
        log.record(f"r{i}", f"chatcmpl-{i}", InterventionStage.PROMPT, "eco", ["t1", "t1", "t2"])


def test_records_are_numbered_and_paged_oldest_first() -> None:
    log = InterventionLog(capacity=10)
    assert (log.last_seq, log.oldest_seq) == (0, 1)
    _fill(log, 4)
    assert [r.seq for r in log.page()] == [1, 2, 3, 4]
    assert [r.request_id for r in log.page(after=2)] == ["r2", "r3"]
    assert [r.seq for r in log.page(after=0, limit=2)] == [1, 2]
    assert [r.seq for r in log.page(request_id="r1")] == [2]
    assert log.page()[0].target_ids == ("t1", "t2")  # de-duplicated, in order


def test_a_full_ring_drops_the_oldest_and_says_so() -> None:
    log = InterventionLog(capacity=3)
    _fill(log, 5)
    assert [r.seq for r in log.page()] == [3, 4, 5]
    assert (log.oldest_seq, log.last_seq) == (3, 5)  # a reader at after=1 lost seq 2


def test_capacity_zero_turns_the_record_off() -> None:
    log = InterventionLog(capacity=0)
    _fill(log, 3)
    assert log.page() == [] and log.last_seq == 0
