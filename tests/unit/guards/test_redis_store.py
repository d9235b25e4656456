"""Unit tests for guards.redis_store against a real redis-server: atomic versioned writes, the
change log, snapshots, idempotent retries, and what an unreachable Redis does."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis
from _redis_server import RedisServer, free_port

from guards.redis_store import RedisTargetStore
from guards.store import StoreError, StoreUnavailable, open_store
from guards.targets import (
    AdapterInfo,
    AdapterState,
    Calibration,
    CalibrationState,
    Intervention,
    Target,
    TargetSpec,
)


def make_target(i: int) -> Target:
    return Target(
        id=f"tgt_{i:04d}",
        spec=TargetSpec(
            name=f"Target {i} — Ünïcødé",
            description=f"description {i}",
            aliases=(f"alias {i}", f"other {i}"),
            examples=(f"Who is target {i}?",),
            redact=(f"secret-{i}@example.org",),
            intervention=Intervention.REFUSE if i % 2 else Intervention.AUTO,
        ),
        created_at=1_700_000_000 + i,
    )


@pytest.fixture()
def store(redis_url: str) -> Iterator[RedisTargetStore]:
    s = RedisTargetStore.open(redis_url)
    yield s
    s.close()


@pytest.fixture()
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def log(store: RedisTargetStore) -> list[tuple[int, str, str, str]]:
    """(version, op, target id, kind) of every change-log entry."""
    return [
        (c.version, c.op, c.target_id, c.kind)
        for c in store.read_changes(store.client, "0-0", None)
    ]


def test_open_store_picks_redis_by_scheme(redis_url: str) -> None:
    store = open_store(redis_url)
    try:
        assert isinstance(store, RedisTargetStore)
    finally:
        store.close()


def test_round_trip_keeps_every_field(store: RedisTargetStore) -> None:
    target = make_target(1)
    store.add(target, vectors=b"packed")
    assert store.get(target.id) == target
    assert store.list() == [target]
    assert store.get_vectors(target.id) == b"packed"
    assert store.get("tgt_missing") is None


def test_list_is_oldest_first(store: RedisTargetStore) -> None:
    for i in (3, 1, 2):
        store.add(make_target(i))
    assert [t.id for t in store.list()] == ["tgt_0001", "tgt_0002", "tgt_0003"]


def test_every_write_takes_the_next_version_and_logs_one_change(store: RedisTargetStore) -> None:
    a, b = make_target(1), make_target(2)
    store.add(a)
    store.add(b)
    cal = Calibration(
        state=CalibrationState.DONE,
        threshold=0.42,
        expansion=("It said this.",),
        adapter=AdapterInfo(AdapterState.READY, "uploaded", 1.0, 0.0, 8),
    )
    assert store.update_calibration(a.id, cal, vectors=b"new") is True
    assert store.put_artifact(a.id, "steering", b"\x00\x01") is True
    assert store.remove(b.id) is True
    assert log(store) == [
        (1, "put", a.id, ""),
        (2, "put", b.id, ""),
        (3, "cal", a.id, ""),
        (4, "art", a.id, "steering"),
        (5, "del", b.id, ""),
    ]
    snap = store.snapshot()
    assert snap.version == 5
    assert snap.versions == {a.id: 3}  # record versions; the artifact has its own
    assert snap.artifacts == {a.id: 4}
    assert snap.stream_id == store.read_changes(store.client, "0-0", None)[-1].stream_id
    got = store.get(a.id)
    assert got is not None and got.calibration == cal
    assert store.get_vectors(a.id) == b"new"
    record = store.get_record(a.id)
    assert record is not None and record.version == 3 and record.vectors == b"new"
    assert store.seen_version(a.id) == 3 and store.seen_artifacts(a.id) == 4
    assert store.seen_version(b.id) == 5  # the deletion, so older news of b is stale


def test_writes_on_a_missing_target_change_nothing(store: RedisTargetStore) -> None:
    assert store.update_calibration("tgt_nope", Calibration()) is False
    assert store.put_artifact("tgt_nope", "lora", b"x") is False
    assert store.remove("tgt_nope") is False
    assert store.snapshot().version == 0
    assert log(store) == []


def test_remove_drops_vectors_and_artifacts(store: RedisTargetStore, raw: redis.Redis) -> None:
    target = make_target(1)
    store.add(target, vectors=b"v")
    store.put_artifact(target.id, "lora", b"weights")
    store.put_artifact(target.id, "steering", b"vectors")
    assert store.artifact_kinds(target.id) == ["lora", "steering"]
    assert store.remove(target.id) is True
    assert store.remove(target.id) is False
    assert store.get_artifact(target.id, "lora") is None
    assert store.get_vectors(target.id) is None
    assert store.artifact_kinds(target.id) == []
    # Only the bookkeeping keys remain.
    assert sorted(k.decode() for k in raw.keys("lethe:*")) == [
        "lethe:changes",
        "lethe:epoch",
        "lethe:version",
    ]


def test_duplicate_id_is_an_error_but_an_identical_retry_is_not(store: RedisTargetStore) -> None:
    target = make_target(1)
    store.add(target)
    store.add(target)  # the retry after a lost reply: answered, not applied twice
    assert store.snapshot().version == 1
    assert len(log(store)) == 1
    other = Target(id=target.id, spec=TargetSpec(name="Someone else"), created_at=1)
    with pytest.raises(StoreError, match="duplicate"):
        store.add(other)
    assert store.get(target.id) == target


def test_concurrent_writers_get_distinct_contiguous_versions(redis_url: str) -> None:
    stores = [RedisTargetStore.open(redis_url) for _ in range(4)]
    errors: list[BaseException] = []

    def write(n: int, s: RedisTargetStore) -> None:
        try:
            for i in range(25):
                s.add(make_target(n * 100 + i))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n, s)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    entries = log(stores[0])
    assert [v for v, *_ in entries] == list(range(1, 101))
    assert len({tid for _, _, tid, _ in entries}) == 100
    assert stores[0].snapshot().version == 100
    assert len(stores[0].list()) == 100
    for s in stores:
        s.close()


def test_change_log_entries_name_their_origin_replica(redis_url: str) -> None:
    one, two = RedisTargetStore.open(redis_url), RedisTargetStore.open(redis_url)
    assert one.origin != two.origin
    one.add(make_target(1))
    two.add(make_target(2))
    changes = one.read_changes(one.client, "0-0", None)
    assert [c.origin for c in changes] == [one.origin, two.origin]
    assert all(c.committed_at > 1_600_000_000 for c in changes)
    one.close()
    two.close()


def test_epoch_is_created_once_and_required_without_create(redis_url: str) -> None:
    with pytest.raises(StoreError, match="no registry"):
        RedisTargetStore.open(redis_url, create=False)
    first = RedisTargetStore.open(redis_url)
    epoch = first.snapshot().epoch
    second = RedisTargetStore.open(redis_url, create=False)
    assert epoch and second.snapshot().epoch == epoch
    first.close()
    second.close()


def test_unreachable_redis_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="unreachable"):
        RedisTargetStore.open(f"redis://127.0.0.1:{free_port()}/0")


def test_password_is_not_in_messages() -> None:
    with pytest.raises(StoreUnavailable) as err:
        RedisTargetStore.open(f"redis://user:hunter2@127.0.0.1:{free_port()}/0")
    assert "hunter2" not in str(err.value)
    assert "***" in str(err.value)


def test_writes_fail_whole_while_redis_is_down_and_work_after_a_restart(
    private_redis: RedisServer,
) -> None:
    store = RedisTargetStore.open(private_redis.url())
    kept = make_target(1)
    store.add(kept)
    private_redis.stop(kill=True)
    with pytest.raises(StoreUnavailable):
        store.add(make_target(2))
    with pytest.raises(StoreUnavailable):
        store.remove(kept.id)
    with pytest.raises(StoreUnavailable):
        store.put_artifact(kept.id, "lora", b"x")
    private_redis.start()
    # The pooled connection died with the server; the store reconnects by itself.
    assert [t.id for t in store.list()] == [kept.id]
    assert store.snapshot().version == 1
    store.add(make_target(3))
    assert store.snapshot().version == 2
    store.close()
