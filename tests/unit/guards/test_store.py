"""Unit tests for guards.store: the SQLite target store and registry URLs."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from guards.store import SqliteTargetStore, StoreError, open_store
from guards.targets import Calibration, CalibrationState, Intervention, Target, TargetSpec


def url_of(path: Path) -> str:
    return f"sqlite:///{path.as_posix()}"


def make_target(i: int, **spec_changes: object) -> Target:
    spec = TargetSpec(
        name=f"Target {i} — Ünïcødé",
        description=f"description {i}",
        aliases=(f"alias {i}", f"other {i}"),
        examples=(f"Who is target {i}?",),
        redact=(f"secret-{i}@example.org",),
        intervention=Intervention.REFUSE if i % 2 else Intervention.AUTO,
    )
    if spec_changes:
        spec = TargetSpec(**{**spec.__dict__, **spec_changes})  # type: ignore[arg-type]
    return Target(id=f"tgt_{i:04d}", spec=spec, created_at=1_700_000_000 + i)


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "registry.db"


@pytest.fixture()
def store(db: Path) -> Iterator[SqliteTargetStore]:
    s = SqliteTargetStore.open(url_of(db))
    yield s
    s.close()


def test_add_get_round_trip_keeps_every_field(store: SqliteTargetStore) -> None:
    target = make_target(1)
    store.add(target)
    assert store.get(target.id) == target


def test_get_unknown_is_none(store: SqliteTargetStore) -> None:
    assert store.get("tgt_missing") is None


def test_list_is_oldest_first(store: SqliteTargetStore) -> None:
    targets = [make_target(i) for i in (3, 1, 2)]
    for t in targets:
        store.add(t)
    assert [t.id for t in store.list()] == ["tgt_0001", "tgt_0002", "tgt_0003"]
    assert store.list() == sorted(targets, key=lambda t: t.created_at)


def test_remove_deletes_once(store: SqliteTargetStore) -> None:
    store.add(make_target(1))
    store.add(make_target(2))
    assert store.remove("tgt_0001") is True
    assert store.remove("tgt_0001") is False
    assert store.get("tgt_0001") is None
    assert [t.id for t in store.list()] == ["tgt_0002"]


def test_remove_unknown_is_false(store: SqliteTargetStore) -> None:
    assert store.remove("tgt_nope") is False


def test_update_calibration_round_trip(store: SqliteTargetStore) -> None:
    target = make_target(1)
    store.add(target)
    cal = Calibration(
        state=CalibrationState.DONE,
        progress=1.0,
        message="3 leak terms",
        threshold=0.4375,
        eco_sigma=0.8125,
        expansion=("It is a thing.", "Another sentence!"),
    )
    assert store.update_calibration(target.id, cal) is True
    got = store.get(target.id)
    assert got is not None
    assert got.calibration == cal
    assert got.spec == target.spec  # spec untouched by a calibration update


def test_update_calibration_of_unknown_target_is_false(store: SqliteTargetStore) -> None:
    assert store.update_calibration("tgt_nope", Calibration()) is False
    assert store.list() == []


def test_duplicate_id_is_a_store_error(store: SqliteTargetStore) -> None:
    store.add(make_target(1))
    with pytest.raises(StoreError):
        store.add(make_target(1))
    assert len(store.list()) == 1


def test_reopen_keeps_data(db: Path) -> None:
    first = SqliteTargetStore.open(url_of(db))
    targets = [make_target(i) for i in range(5)]
    for t in targets:
        first.add(t)
    first.remove("tgt_0002")
    first.update_calibration("tgt_0003", Calibration(state=CalibrationState.DONE, progress=1.0))
    first.close()

    second = SqliteTargetStore.open(url_of(db), create=False)
    try:
        listed = second.list()
        assert [t.id for t in listed] == ["tgt_0000", "tgt_0001", "tgt_0003", "tgt_0004"]
        assert listed[0] == targets[0]
        assert listed[2].calibration.state is CalibrationState.DONE
    finally:
        second.close()


def test_open_store_dispatches_sqlite_urls(db: Path) -> None:
    store = open_store(url_of(db))
    try:
        store.add(make_target(7))
        assert [t.id for t in store.list()] == ["tgt_0007"]
    finally:
        store.close()
    assert db.exists()


def test_missing_file_with_create_false_raises(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(StoreError) as err:
        SqliteTargetStore.open(url_of(path), create=False)
    assert str(path) in str(err.value)
    assert "does not exist" in str(err.value)
    assert not path.exists()


def test_garbage_file_raises_store_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    path.write_bytes(os.urandom(4096) + b"definitely not sqlite" * 100)
    with pytest.raises(StoreError) as err:
        SqliteTargetStore.open(url_of(path))
    message = str(err.value)
    assert str(path) in message
    assert "not usable" in message or "integrity" in message


def test_damaged_pages_fail_the_integrity_check_at_open(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    store = SqliteTargetStore.open(url_of(path))
    for i in range(120):
        store.add(make_target(i, examples=("x" * 900,) * 3))
    store.close()
    raw = bytearray(path.read_bytes())
    assert len(raw) > 64 * 1024
    for offset in range(8192, len(raw) - 512, 4096):  # keep the header page, hit every tree page
        raw[offset + 64 : offset + 320] = os.urandom(256)
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError) as err:
        SqliteTargetStore.open(url_of(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgres://user@localhost/lethe",
        "mongodb://localhost:27017/lethe",
        "registry.db",
        "sqlite://",
        "",
    ],
)
def test_bad_urls_raise_store_error(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError) as err:
        open_store(url)
    assert "URL" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_sqlite_url_with_a_host_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError):
        open_store("sqlite://somehost/x.db")
    assert list(tmp_path.iterdir()) == []


def test_undecodable_row_raises_store_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    store = SqliteTargetStore.open(url_of(path))
    store.add(make_target(1))
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE targets SET spec = ? WHERE id = ?", ("{not json", "tgt_0001"))
    reopened = SqliteTargetStore.open(url_of(path))
    try:
        with pytest.raises(StoreError) as err:
            reopened.list()
        assert str(path) in str(err.value)
    finally:
        reopened.close()
