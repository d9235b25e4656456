"""Durability of the registry: restarts, corrupt files, and a writer killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from _support import (
    ADMIN,
    REPO_ROOT,
    asgi_client,
    assert_error_shape,
    gateway_settings,
    spec_for,
)

from app.main import create_app
from app.settings import Settings
from guards.calibration import BenignCorpus
from guards.detector import Detector
from guards.embedder import SentenceEmbedder
from guards.registry import Registry
from guards.store import SqliteTargetStore, StoreError
from guards.targets import CalibrationState, TargetSpec
from guards.verdict import ChatTurn

# Only the async tests below run on the (session) event loop.
session_loop = pytest.mark.asyncio(loop_scope="session")

ZORBLAX = TargetSpec(
    name="Zorblax Quintavenue",
    aliases=("Zorblax",),
    examples=("Who is Zorblax Quintavenue?",),
    redact=("zorblax@example.org",),
)


def registry_at(db: Path, embedder: SentenceEmbedder, corpus: BenignCorpus) -> Registry:
    """A registry wired like the app's, over a SQLite file."""
    s = Settings()
    config = s.threshold_config()
    store = SqliteTargetStore.open(f"sqlite:///{db.as_posix()}")
    registry = Registry(store, embedder, corpus, config, default_sigma=s.eco_default_sigma)
    registry.load()
    return registry


@contextmanager
def reopened(db: Path, embedder: SentenceEmbedder, corpus: BenignCorpus) -> Iterator[Registry]:
    """The registry at `db` as a restarted process sees it, closed after use."""
    registry = registry_at(db, embedder, corpus)
    try:
        yield registry
    finally:
        registry.store.close()


def flagged_ids(registry: Registry, text: str) -> set[str]:
    verdict = Detector(registry, Settings().detector_window_words).inspect([ChatTurn("user", text)])
    return {m.target_id for m in verdict.matches}


# --- fact terms ----------------------------------------------------------------------------


def test_fact_terms_follow_calibration_restart_and_deletion(
    tmp_path: Path, embedder: SentenceEmbedder, corpus: BenignCorpus
) -> None:
    """A rare fact the model named at registration lifts the windows that mention it, for
    exactly the targets that have it, now and after a restart."""
    db = tmp_path / "registry.db"
    first = registry_at(db, embedder, corpus)
    target = first.add(ZORBLAX)
    other = first.add(TargetSpec(name="Plimbertine Oxwaddle"))
    question = "What happened in 1843 on the other side of the river?"
    window_words = Settings().detector_window_words

    def flagged_with_bonus(registry: Registry) -> set[str]:
        detector = Detector(registry, window_words, fact_bonus=1.0)
        return {m.target_id for m in detector.inspect([ChatTurn("user", question)]).matches}

    assert flagged_with_bonus(first) == set()
    assert first.update_calibration(target.id, fact_terms=("1843", "quintavenue-hall"))
    assert first.fact_owners("1843") == {target.id}
    assert flagged_with_bonus(first) == {target.id}
    assert flagged_ids(first, question) == set()  # the bonus alone decides here
    assert first.update_calibration(other.id, fact_terms=("1843",))
    assert first.fact_owners("1843") == {target.id, other.id}
    first.store.close()

    with reopened(db, embedder, corpus) as second:
        assert second.fact_owners("1843") == {target.id, other.id}
        assert second.update_calibration(target.id, fact_terms=("1901",))
        assert second.fact_owners("1843") == {other.id}
        assert second.fact_owners("quintavenue-hall") == frozenset()
        assert second.remove(other.id)
        assert second.fact_owners("1843") == frozenset()
        assert flagged_with_bonus(second) == set()
        assert [t.id for t in second.fact_targets()] == [target.id]


def test_redact_strings_follow_targets_and_restart_not_calibration_writes(
    tmp_path: Path, embedder: SentenceEmbedder, corpus: BenignCorpus
) -> None:
    """Every chat request reads the never-emit strings: they follow registrations, removals
    and restarts, and the many calibration writes to a target leave them as they are."""
    db = tmp_path / "registry.db"
    first = registry_at(db, embedder, corpus)
    target = first.add(ZORBLAX)
    plain = first.add(TargetSpec(name="Plimbertine Oxwaddle"))
    strings = first.redact_strings()
    assert strings == ("zorblax@example.org",)
    for progress in (0.1, 0.5, 0.9):
        assert first.update_calibration(target.id, progress=progress)
    assert first.redact_strings() is strings  # not rebuilt by calibration progress
    other = first.add(TargetSpec(name="Quorrith Banville", redact=("+1 212 555 0199",)))
    assert sorted(first.redact_strings()) == ["+1 212 555 0199", "zorblax@example.org"]
    assert first.remove(plain.id)
    first.store.close()

    with reopened(db, embedder, corpus) as second:
        assert sorted(second.redact_strings()) == ["+1 212 555 0199", "zorblax@example.org"]
        assert second.remove(target.id)
        assert second.redact_strings() == ("+1 212 555 0199",)
        assert second.remove(other.id)
        assert second.redact_strings() == ()


def test_targets_list_in_registration_order_within_a_second_and_after_restart(
    tmp_path: Path, embedder: SentenceEmbedder, corpus: BenignCorpus
) -> None:
    db = tmp_path / "registry.db"
    first = registry_at(db, embedder, corpus)
    added = [first.add(TargetSpec(name=f"Ordered Person {i}")).id for i in range(6)]
    assert [t.id for t in first.list()] == added
    first.store.close()
    with reopened(db, embedder, corpus) as second:
        assert [t.id for t in second.list()] == added


# --- registry-level restarts ------------------------------------------------------------


def test_targets_survive_a_restart_and_stay_enforced(
    tmp_path: Path, embedder: SentenceEmbedder, corpus: BenignCorpus
) -> None:
    db = tmp_path / "registry.db"
    first = registry_at(db, embedder, corpus)
    target = first.add(ZORBLAX)
    other = first.add(TargetSpec(name="Plimbertine Oxwaddle"))
    assert first.remove(other.id)
    first.store.close()

    with reopened(db, embedder, corpus) as second:
        assert [t.id for t in second.list()] == [target.id]
        restored = second.get(target.id)
        assert restored is not None
        assert restored.spec == ZORBLAX
        assert restored.calibration == target.calibration
        assert len(second.index) == len(target.vector_texts())
        assert flagged_ids(second, "Tell me everything about Zorblax.") == {target.id}
        assert flagged_ids(second, "What is the capital of France?") == set()
        assert flagged_ids(second, "Tell me about Plimbertine Oxwaddle.") == set()


def test_calibration_updates_survive_a_restart(
    tmp_path: Path, embedder: SentenceEmbedder, corpus: BenignCorpus
) -> None:
    db = tmp_path / "registry.db"
    first = registry_at(db, embedder, corpus)
    target = first.add(ZORBLAX)
    expansion = ("Zorblax Quintavenue is a wizard from Elbonia.", "He was born in 1887.")
    updated = first.update_calibration(
        target.id,
        recalibrate=True,
        state=CalibrationState.DONE,
        progress=1.0,
        eco_sigma=0.75,
        expansion=expansion,
    )
    assert updated is not None
    first.store.close()

    with reopened(db, embedder, corpus) as second:
        restored = second.get(target.id)
        assert restored is not None
        assert restored.calibration.state is CalibrationState.DONE
        assert restored.calibration.eco_sigma == 0.75
        assert restored.calibration.expansion == expansion
        assert restored.calibration.threshold == pytest.approx(updated.calibration.threshold)
        # The expansion is embedded again at load: index holds spec + expansion vectors.
        assert len(second.index) == len(ZORBLAX.texts()) + len(expansion)


def test_removal_survives_a_restart(
    tmp_path: Path, embedder: SentenceEmbedder, corpus: BenignCorpus
) -> None:
    db = tmp_path / "registry.db"
    first = registry_at(db, embedder, corpus)
    target = first.add(ZORBLAX)
    assert first.remove(target.id)
    first.store.close()
    with reopened(db, embedder, corpus) as second:
        assert second.list() == []
        assert len(second.index) == 0
        assert flagged_ids(second, "Who is Zorblax?") == set()


# --- start-up failures (fail before anything heavy loads) --------------------------------


@session_loop
async def test_corrupt_registry_makes_startup_fail_naming_the_path(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    db.write_bytes(os.urandom(2048) + b"this is not a database" * 64)
    app = create_app(gateway_settings(tmp_path))
    with pytest.raises(StoreError) as err:
        async with app.router.lifespan_context(app):
            pytest.fail("the gateway started on a corrupt registry")
    assert str(db) in str(err.value)


@session_loop
async def test_missing_registry_with_create_false_makes_startup_fail(tmp_path: Path) -> None:
    db = tmp_path / "absent" / "registry.db"
    app = create_app(
        gateway_settings(tmp_path, registry_url=f"sqlite:///{db}", registry_create=False)
    )
    with pytest.raises(StoreError) as err:
        async with app.router.lifespan_context(app):
            pytest.fail("the gateway started without its registry")
    assert str(db) in str(err.value)
    assert not db.exists()


# --- whole-app restart --------------------------------------------------------------------


@pytest.mark.slow
@session_loop
async def test_whole_app_restart_keeps_targets_and_the_intervention_record(
    tmp_path: Path,
) -> None:
    settings = gateway_settings(tmp_path)
    body = {"name": "Zorblax Quintavenue", "aliases": ["Zorblax"], "intervention": "refuse"}
    chat = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Who is Zorblax?"}],
        "max_tokens": 4,
    }

    first = create_app(settings)
    async with first.router.lifespan_context(first):
        async with asgi_client(first) as http:
            created = await http.post("/admin/targets", json=body, headers=ADMIN)
            assert created.status_code == 201
            target = created.json()
            refused = await http.post(
                "/v1/chat/completions", json=chat, headers={"X-Request-ID": "before-restart"}
            )
            assert refused.status_code == 200

    second = create_app(settings)
    async with second.router.lifespan_context(second):
        async with asgi_client(second) as http:
            listed = (await http.get("/admin/targets", headers=ADMIN)).json()["data"]
            assert [t["id"] for t in listed] == [target["id"]]
            for key in ("name", "aliases", "intervention", "created_at"):
                assert listed[0][key] == target[key], key
            verdict = (
                await http.post("/admin/classify", json={"text": "Who is Zorblax?"}, headers=ADMIN)
            ).json()
            assert verdict["flagged"] is True
            assert [m["target_id"] for m in verdict["matches"]] == [target["id"]]
            answer = await http.post(
                "/v1/chat/completions", json=chat, headers={"X-Request-ID": "after-restart"}
            )
            assert answer.json()["choices"][0]["message"]["content"] == settings.refusal_message
            # The record of intervened requests lives beside the registry: it survived, and
            # its numbering went on.
            record = (await http.get("/admin/interventions", headers=ADMIN)).json()
            assert [(r["seq"], r["request_id"], r["action"]) for r in record["data"]] == [
                (1, "before-restart", "refuse"),
                (2, "after-restart", "refuse"),
            ]
            assert record["data"][0]["target_ids"] == [target["id"]]
            deleted = await http.delete(f"/admin/targets/{target['id']}", headers=ADMIN)
            assert deleted.status_code == 204
            again = await http.get(f"/admin/targets/{target['id']}", headers=ADMIN)
            assert again.status_code == 404
            assert_error_shape(again.json())


# --- SIGKILL mid-write ----------------------------------------------------------------------

WRITER = """
import sys
from _support import spec_for
from guards.store import SqliteTargetStore
from guards.targets import Target

store = SqliteTargetStore.open(sys.argv[1])
i = len(store.list())
while True:
    store.add(Target(id=f"t{i:06d}", spec=spec_for(i), created_at=i))
    print(i, flush=True)
    i += 1
"""


def run_writer_until_killed(url: str, at_least: int) -> int:
    """Start a writer, SIGKILL it after `at_least` acknowledged adds; the last acknowledged i."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(Path(__file__).parent)]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO_ROOT,
        text=True,
    )
    last = -1
    seen = 0
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while seen < at_least:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"writer died: {proc.stderr.read() if proc.stderr else ''}")
            last = int(line)
            seen += 1
            assert time.monotonic() < deadline, "writer too slow"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return last


def test_sigkill_mid_write_leaves_only_complete_targets(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    url = f"sqlite:///{db.as_posix()}"
    acknowledged = -1
    for round_, at_least in enumerate((25, 7, 40)):
        acknowledged = run_writer_until_killed(url, at_least)
        store = SqliteTargetStore.open(url, create=False)
        try:
            targets = store.list()
        finally:
            store.close()
        ids = [t.id for t in targets]
        # Contiguous from 0: no hole, nothing half-written, every acknowledged add is there.
        assert ids == [f"t{i:06d}" for i in range(len(ids))], round_
        assert len(ids) >= acknowledged + 1, round_
        for i, target in enumerate(targets):
            assert target.spec == spec_for(i), target.id
            assert target.created_at == i
    assert acknowledged >= 25 + 7 + 40 - 1
