"""Durable storage of targets: `TargetStore` is the contract, SQLite (WAL) the embedded default."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from guards.targets import (
    AdapterInfo,
    AdapterState,
    Calibration,
    CalibrationState,
    Intervention,
    Target,
    TargetSpec,
)


class StoreError(RuntimeError):
    """The registry store cannot be opened or used; the message says why and where."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (a shared registry's server is down or slow);
    the write that raised this did not happen."""


class TargetStore(Protocol):
    """Durable registry storage. Every write is atomic: a target is fully there or not at all.

    `vectors` are the target's packed index vectors (guards.vector_blob): a store shared by
    several replicas keeps them, so that the others index a change without embedding it; a
    store serving one process may ignore them (`get_vectors` then answers None).
    """

    def add(self, target: Target, vectors: bytes | None = None) -> None: ...
    def update_calibration(
        self, target_id: str, calibration: Calibration, vectors: bytes | None = None
    ) -> bool: ...
    def remove(self, target_id: str) -> bool: ...
    def get(self, target_id: str) -> Target | None: ...
    def list(self) -> list[Target]: ...
    def put_artifact(self, target_id: str, kind: str, data: bytes) -> bool: ...
    def get_artifact(self, target_id: str, kind: str) -> bytes | None: ...
    def get_vectors(self, target_id: str) -> bytes | None: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS targets (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,  -- unix time; SQLite keeps sub-second values as REAL
    spec TEXT NOT NULL,
    calibration TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
    target_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (target_id, kind)
);
"""


def _spec_to_json(spec: TargetSpec) -> str:
    data = asdict(spec)
    data["intervention"] = spec.intervention.value
    return json.dumps(data)


def _spec_from_json(raw: str) -> TargetSpec:
    data: dict[str, Any] = json.loads(raw)
    return TargetSpec(
        name=data["name"],
        description=data.get("description", ""),
        aliases=tuple(data.get("aliases", ())),
        examples=tuple(data.get("examples", ())),
        redact=tuple(data.get("redact", ())),
        intervention=Intervention(data.get("intervention", "auto")),
    )


def _calibration_to_json(cal: Calibration) -> str:
    data = asdict(cal)
    data["state"] = cal.state.value
    data["auto_method"] = cal.auto_method.value
    data["adapter"]["state"] = cal.adapter.state.value
    return json.dumps(data)


def _adapter_from_dict(data: dict[str, Any]) -> AdapterInfo:
    eta = data.get("eta_s")
    return AdapterInfo(
        state=AdapterState(data.get("state", "none")),
        source=str(data.get("source", "")),
        progress=float(data.get("progress", 0.0)),
        eta_s=None if eta is None else float(eta),
        rank=int(data.get("rank", 0)),
        message=data.get("message"),
    )


def _calibration_from_json(raw: str) -> Calibration:
    data: dict[str, Any] = json.loads(raw)
    return Calibration(
        state=CalibrationState(data.get("state", "pending")),
        progress=float(data.get("progress", 0.0)),
        message=data.get("message"),
        threshold=float(data.get("threshold", 1.0)),
        eco_sigma=float(data.get("eco_sigma", 1.0)),
        expansion=tuple(data.get("expansion", ())),
        fact_terms=tuple(data.get("fact_terms", ())),
        steer_strength=float(data.get("steer_strength", 0.0)),
        auto_method=Intervention(data.get("auto_method", "eco")),
        adapter=_adapter_from_dict(data.get("adapter") or {}),
    )


class SqliteTargetStore:
    """Targets in one SQLite file in WAL mode; each write is one transaction.

    Example:
        >>> store = SqliteTargetStore.open("sqlite:////tmp/registry.db")  # doctest: +SKIP
    """

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        if not path.exists():
            if not create:
                raise StoreError(
                    f"registry database {path} does not exist (LETHE_REGISTRY_CREATE=false)"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            # check_same_thread=False: calls come from the event loop and worker threads,
            # serialised by self._lock.
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            self._conn.execute("SELECT count(*) FROM targets").fetchone()
            check = self._conn.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(f"registry database {path} is not usable: {exc}") from exc
        if check is None or check[0] != "ok":
            self._conn.close()
            first = str(check[0]).splitlines()[0] if check else "no result"
            raise StoreError(f"registry database {path} failed its integrity check: {first}")

    @classmethod
    def open(cls, url: str, *, create: bool = True) -> SqliteTargetStore:
        """Open a store from a `sqlite:///path` URL."""
        parsed = urlparse(url)
        if parsed.scheme != "sqlite" or parsed.netloc or not url.startswith("sqlite:///"):
            raise StoreError(
                f"unsupported registry URL {url!r}: expected sqlite:///path/to/file.db"
            )
        # sqlite:///rel/path -> "/rel/path" (absolute); sqlite:////abs -> "//abs".
        raw = url[len("sqlite:///") :]
        return cls(Path(raw), create=create)

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        with self._lock:
            try:
                cur = self._conn.execute(sql, params)
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"registry write failed: {exc}") from exc
            return cur.rowcount

    def add(self, target: Target, vectors: bytes | None = None) -> None:
        """Insert a target in one transaction (`vectors` are not kept: one process re-embeds
        at start-up)."""
        self._write(
            "INSERT INTO targets (id, created_at, spec, calibration) VALUES (?, ?, ?, ?)",
            (
                target.id,
                target.created_at,
                _spec_to_json(target.spec),
                _calibration_to_json(target.calibration),
            ),
        )

    def update_calibration(
        self, target_id: str, calibration: Calibration, vectors: bytes | None = None
    ) -> bool:
        """Replace a target's derived state; False when the target is gone."""
        n = self._write(
            "UPDATE targets SET calibration = ? WHERE id = ?",
            (_calibration_to_json(calibration), target_id),
        )
        return n > 0

    def remove(self, target_id: str) -> bool:
        """Delete a target and its artifacts in one transaction; False when it did not exist."""
        with self._lock:
            try:
                with self._conn:  # one transaction
                    self._conn.execute("BEGIN")
                    self._conn.execute("DELETE FROM artifacts WHERE target_id = ?", (target_id,))
                    n = self._conn.execute(
                        "DELETE FROM targets WHERE id = ?", (target_id,)
                    ).rowcount
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"registry write failed: {exc}") from exc
        return n > 0

    def put_artifact(self, target_id: str, kind: str, data: bytes) -> bool:
        """Store a target's binary state (steering vectors, adapter weights); False when the
        target is gone."""
        n = self._write(
            "INSERT OR REPLACE INTO artifacts (target_id, kind, data) "
            "SELECT id, ?, ? FROM targets WHERE id = ?",
            (kind, data, target_id),
        )
        return n > 0

    def get_artifact(self, target_id: str, kind: str) -> bytes | None:
        """A stored artifact, or None."""
        with self._lock:
            try:
                row = self._conn.execute(
                    "SELECT data FROM artifacts WHERE target_id = ? AND kind = ?", (target_id, kind)
                ).fetchone()
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"registry database {self.path} cannot be read: {exc}") from exc
        return None if row is None else bytes(row[0])

    def get_vectors(self, target_id: str) -> bytes | None:
        """None: this store does not keep vectors (see `add`)."""
        return None

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Target]:
        with self._lock:
            try:
                rows = self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"registry database {self.path} cannot be read: {exc}") from exc
        try:
            return [
                Target(
                    id=row[0],
                    created_at=float(row[1]),
                    spec=_spec_from_json(row[2]),
                    calibration=_calibration_from_json(row[3]),
                )
                for row in rows
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"registry database {self.path} holds a target that cannot be decoded: {exc}"
            ) from exc

    def get(self, target_id: str) -> Target | None:
        """One target by id."""
        rows = self._rows(
            "SELECT id, created_at, spec, calibration FROM targets WHERE id = ?", (target_id,)
        )
        return rows[0] if rows else None

    def list(self) -> list[Target]:
        """All targets, oldest first."""
        return self._rows(
            "SELECT id, created_at, spec, calibration FROM targets ORDER BY created_at, id"
        )

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()


def open_store(url: str, *, create: bool = True) -> TargetStore:
    """Open the store a registry URL names."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        return SqliteTargetStore.open(url, create=create)
    if scheme in ("redis", "rediss", "unix"):
        from guards.redis_store import RedisTargetStore

        return RedisTargetStore.open(url, create=create)
    raise StoreError(f"unsupported registry URL scheme {scheme!r} in {url!r}")
