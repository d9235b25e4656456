"""The bounded in-memory record of intervened requests (a lone gateway's)."""

from __future__ import annotations

from app.interventions import Intervention, InterventionLog, InterventionStage


def _fill(log: InterventionLog, n: int) -> None:
    for i in range(n):
        log.record(
            Intervention.of(
                f"r{i}", f"chatcmpl-{i}", InterventionStage.PROMPT, "eco", ["t1", "t1", "t2"]
            )
        )


def test_records_are_numbered_and_paged_oldest_first() -> None:
    log = InterventionLog(capacity=10)
    empty = log.read()
    assert (empty.records, empty.last_seq, empty.oldest_seq) == ([], 0, 1)
    _fill(log, 4)
    assert [r.seq for r in log.read().records] == [1, 2, 3, 4]
    assert [r.request_id for r in log.read(after=2).records] == ["r2", "r3"]
    two = log.read(after=0, limit=2)
    assert [r.seq for r in two.records] == [1, 2] and two.has_more
    assert not log.read(after=2, limit=2).has_more
    assert [r.seq for r in log.read(request_id="r1").records] == [2]
    assert log.read().records[0].target_ids == ("t1", "t2")  # de-duplicated, in order


def test_a_full_ring_drops_the_oldest_and_says_so() -> None:
    log = InterventionLog(capacity=3)
    _fill(log, 5)
    page = log.read()
    assert [r.seq for r in page.records] == [3, 4, 5]
    assert (page.oldest_seq, page.last_seq) == (3, 5)  # a reader at after=1 lost seq 2


def test_capacity_zero_turns_the_record_off() -> None:
    log = InterventionLog(capacity=0)
    _fill(log, 3)
    page = log.read()
    assert page.records == [] and page.last_seq == 0
