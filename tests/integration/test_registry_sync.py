"""Two replicas' registries in one process, sharing a real Redis: propagation of every kind of
change, stale changes, missed changes (a gap in the change log), outages, a Redis that lost
its data, and concurrent writers.

These run at the registry level (real embedder and corpus, no model); tests/integration/
test_replicas.py runs the same through two real `lethe serve` processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import redis
from _redis_server import RedisServer

from app.settings import Settings
from guards.calibration import BenignCorpus
from guards.detector import Detector
from guards.embedder import SentenceEmbedder
from guards.redis_store import RedisTargetStore
from guards.registry import Registry, RegistryEvent
from guards.store import StoreUnavailable
from guards.sync import RegistrySync
from guards.targets import Target, TargetSpec
from guards.verdict import ChatTurn

ZORBLAX = TargetSpec(
    name="Zorblax Quintavenue",
    aliases=("Zorblax",),
    examples=("Who is Zorblax Quintavenue?",),
    redact=("zorblax@example.org",),
)


@dataclass
class Replica:
    registry: Registry
    sync: RegistrySync
    events: list[RegistryEvent] = field(default_factory=list)

    @property
    def store(self) -> RedisTargetStore:
        return self.sync.store

    def flags(self, text: str) -> set[str]:
        verdict = Detector(self.registry, Settings().detector_window_words).inspect(
            [ChatTurn("user", text)]
        )
        return {m.target_id for m in verdict.matches}

    def close(self) -> None:
        self.sync.stop()
        self.store.close()


def wait_until(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or check}")
        time.sleep(0.02)


@pytest.fixture()
def make_replica(
    embedder: SentenceEmbedder, corpus: BenignCorpus
) -> Iterator[Callable[[str], Replica]]:
    replicas: list[Replica] = []
    s = Settings()
    config = s.threshold_config()

    def make(url: str) -> Replica:
        store = RedisTargetStore.open(url)
        registry = Registry(store, embedder, corpus, config, default_sigma=s.eco_default_sigma)
        sync = RegistrySync(registry, store, block_ms=200, retry_s=0.05, max_retry_s=0.2)
        replica = Replica(registry, sync)
        registry.add_listener(replica.events.append)
        sync.load()
        sync.start()
        replicas.append(replica)
        return replica

    yield make
    for replica in replicas:
        replica.close()


def test_registration_and_deletion_propagate_both_ways(
    redis_url: str, make_replica: Callable[[str], Replica]
) -> None:
    a, b = make_replica(redis_url), make_replica(redis_url)
    target = a.registry.add(ZORBLAX)
    wait_until(lambda: b.registry.get(target.id) is not None, what="propagation to b")
    assert b.registry.get(target.id) == target
    assert b.flags("Tell me about Zorblax Quintavenue please") == {target.id}
    assert len(b.registry.index) == len(a.registry.index) == len(target.vector_texts())
    assert b.registry.redact_strings() == ("zorblax@example.org",)
    assert RegistryEvent("put", target.id) in b.events
    assert a.events == []  # a's own writes do not echo back

    assert b.registry.remove(target.id)
    wait_until(lambda: a.registry.get(target.id) is None, what="deletion reaching a")
    assert a.flags("Tell me about Zorblax Quintavenue please") == set()
    assert len(a.registry.index) == 0
    assert a.events == [RegistryEvent("remove", target.id)]
    assert a.store.snapshot().version == 2
    wait_until(lambda: a.sync.version == b.sync.version == 2, what="both at version 2")


def test_calibration_and_artifacts_propagate(
    redis_url: str, make_replica: Callable[[str], Replica]
) -> None:
    a, b = make_replica(redis_url), make_replica(redis_url)
    target = a.registry.add(ZORBLAX)
    wait_until(lambda: b.registry.get(target.id) is not None)
    updated = a.registry.update_calibration(
        target.id,
        recalibrate=True,
        expansion=("Zorblax Quintavenue founded the Quintavenue Institute in 1843.",),
        fact_terms=("1843",),
        progress=0.5,
        steer_strength=0.7,
    )
    assert updated is not None
    wait_until(lambda: b.registry.get(target.id) == updated, what="calibration reaching b")
    assert len(b.registry.index) == len(updated.vector_texts())
    assert b.registry.fact_targets() == (updated,)
    a.registry.put_artifact(target.id, "steering", b"\x01\x02\x03")
    wait_until(lambda: RegistryEvent("artifact", target.id, "steering") in b.events)
    assert b.registry.artifact(target.id, "steering") == b"\x01\x02\x03"
    assert a.events == []


def test_a_change_overtaken_by_a_local_write_is_not_applied(
    redis_url: str, make_replica: Callable[[str], Replica]
) -> None:
    a = make_replica(redis_url)
    target = a.registry.add(ZORBLAX)
    stale = Target(id=target.id, spec=TargetSpec(name="Stale"), created_at=target.created_at)
    assert a.registry.apply(stale, is_current=lambda: False) is False
    assert a.registry.get(target.id) == target
    assert a.registry.forget(target.id, is_current=lambda: False) is False
    assert a.flags("Who is Zorblax Quintavenue?") == {target.id}


def test_changes_missed_while_not_listening_are_found_by_a_resync(
    redis_url: str, make_replica: Callable[[str], Replica]
) -> None:
    a, b = make_replica(redis_url), make_replica(redis_url)
    gone = a.registry.add(TargetSpec(name="Plimbertine Oxwaddle"))
    wait_until(lambda: b.registry.get(gone.id) is not None)
    b.sync.stop()  # b's subscription is interrupted ...
    kept = a.registry.add(ZORBLAX)
    assert a.registry.remove(gone.id)
    raw = redis.Redis.from_url(redis_url)
    raw.xtrim("lethe:changes", maxlen=0)  # ... and the log is trimmed past what b saw
    raw.close()
    resyncs = b.sync.resyncs
    b.sync.start()
    wait_until(lambda: b.sync.resyncs > resyncs, what="b noticing the gap")
    assert b.registry.get(kept.id) == kept and b.registry.get(gone.id) is None
    assert b.flags("Who is Zorblax Quintavenue?") == {kept.id}
    assert b.flags("Who is Plimbertine Oxwaddle?") == set()
    assert b.sync.version == a.store.snapshot().version


def test_a_version_gap_in_the_log_triggers_a_resync(
    redis_url: str, make_replica: Callable[[str], Replica]
) -> None:
    a, b = make_replica(redis_url), make_replica(redis_url)
    first = a.registry.add(TargetSpec(name="Plimbertine Oxwaddle"))
    wait_until(lambda: b.registry.get(first.id) is not None)
    resyncs = b.sync.resyncs
    raw = redis.Redis.from_url(redis_url)
    raw.incr("lethe:version")  # a change whose log entry was lost
    raw.close()
    second = a.registry.add(ZORBLAX)
    wait_until(lambda: b.registry.get(second.id) is not None)
    assert b.sync.resyncs > resyncs
    assert b.sync.version == a.store.snapshot().version


def test_outage_keeps_the_last_registry_and_resyncs_when_redis_returns(
    private_redis: RedisServer, make_replica: Callable[[str], Replica]
) -> None:
    a, b = make_replica(private_redis.url()), make_replica(private_redis.url())
    target = a.registry.add(ZORBLAX)
    wait_until(lambda: b.registry.get(target.id) is not None)
    private_redis.stop(kill=True)
    wait_until(lambda: not b.sync.status().connected, what="b noticing the outage")
    with pytest.raises(StoreUnavailable):
        a.registry.add(TargetSpec(name="Plimbertine Oxwaddle"))
    with pytest.raises(StoreUnavailable):
        a.registry.remove(target.id)
    assert [t.id for t in a.registry.list()] == [target.id]  # nothing half-done
    time.sleep(0.5)
    assert b.sync.staleness_s() >= 0.5
    assert b.sync.status().last_error
    assert b.flags("Who is Zorblax Quintavenue?") == {target.id}  # still enforced
    resyncs = b.sync.resyncs
    private_redis.start()
    wait_until(lambda: b.sync.status().connected and b.sync.resyncs > resyncs, what="resync")
    assert b.sync.staleness_s() < 1.0
    later = a.registry.add(TargetSpec(name="Plimbertine Oxwaddle"))
    wait_until(lambda: b.registry.get(later.id) is not None, what="propagation after outage")
    assert [t.spec.name for t in b.registry.list()] == [
        "Zorblax Quintavenue",
        "Plimbertine Oxwaddle",
    ]


def test_a_redis_that_lost_the_registry_does_not_undo_deletion_requests(
    redis_url: str, make_replica: Callable[[str], Replica]
) -> None:
    a, b = make_replica(redis_url), make_replica(redis_url)
    target = a.registry.add(ZORBLAX)
    wait_until(lambda: b.registry.get(target.id) is not None)
    raw = redis.Redis.from_url(redis_url)
    raw.flushall()  # Redis restarted without its data
    raw.close()
    wait_until(lambda: b.sync.status().reset is not None, what="b noticing the reset")
    assert "reset" in (b.sync.status().reset or "")
    assert b.flags("Who is Zorblax Quintavenue?") == {target.id}
    later = a.registry.add(TargetSpec(name="Plimbertine Oxwaddle"))
    wait_until(lambda: b.registry.get(later.id) is not None, what="new writes after the reset")
    assert b.registry.get(target.id) is not None


def test_concurrent_writers_on_two_replicas_converge(
    redis_url: str, make_replica: Callable[[str], Replica]
) -> None:
    a, b = make_replica(redis_url), make_replica(redis_url)
    seeded = [a.registry.add(TargetSpec(name=f"Seed target {i} Vexillary")) for i in range(8)]
    wait_until(lambda: all(b.registry.get(t.id) for t in seeded))
    registered: list[Target] = []
    deleted: list[str] = []
    lock = threading.Lock()

    def writer(replica: Replica, other: Replica, n: int) -> None:
        for i in range(8):
            target = replica.registry.add(TargetSpec(name=f"Race target {n}.{i} Quillwort"))
            with lock:
                registered.append(target)
            if i % 2 == 0:  # delete on the other replica right away: it may not know it yet
                if other.registry.remove(target.id):
                    with lock:
                        deleted.append(target.id)
        for seed in seeded[n * 2 : n * 2 + 2]:
            if replica.registry.remove(seed.id):
                with lock:
                    deleted.append(seed.id)

    threads = [
        threading.Thread(target=writer, args=(a, b, 0)),
        threading.Thread(target=writer, args=(b, a, 1)),
        threading.Thread(target=writer, args=(a, b, 2)),
        threading.Thread(target=writer, args=(b, a, 3)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = {t.id for t in [*seeded, *registered]} - set(deleted)
    assert len(registered) == 32 and len(deleted) == 16 + 8
    version = a.store.snapshot().version
    wait_until(lambda: a.sync.version == b.sync.version == version, what="convergence")
    for replica in (a, b):
        ids = [t.id for t in replica.registry.list()]
        assert len(ids) == len(set(ids))
        assert set(ids) == expected
        assert len(replica.registry.index) == sum(
            len(t.vector_texts()) for t in replica.registry.list()
        )
        assert replica.registry.aliases.target_ids() == expected
    assert {t.id for t in a.store.list()} == expected
