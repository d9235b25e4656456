"""The shared registry: targets, their vectors and artifacts in Redis, with a change log.

The keys, the Lua scripts that write them and the records read back are in
`guards/redis_layout.py`. Each write is one script, so Redis applies it whole or not at all.
"""

from __future__ import annotations

import builtins
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any
from urllib.parse import urlparse

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from guards.redis_layout import (
    ADD_SCRIPT,
    PREFIX,
    PUT_ARTIFACT_SCRIPT,
    REMOVE_SCRIPT,
    STREAM_MAXLEN,
    UPDATE_CAL_SCRIPT,
    Change,
    Record,
    Snapshot,
    decode_target,
    record_json,
    text,
)
from guards.store import StoreError, StoreUnavailable, _calibration_to_json
from guards.targets import Calibration, Target

CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 5.0


class RedisTargetStore:
    """Targets in Redis, shared by every replica; `guards/redis_layout.py` has the layout.

    Besides the `TargetStore` protocol it offers what replication needs: an atomic `snapshot`,
    versioned reads, a blocking `read_changes` on the change log, and per-target bookkeeping of
    the newest version this process has written or applied (`seen_version`), which lets a
    replica tell a stale change from a fresh one.

    Example:
        >>> store = RedisTargetStore.open("redis://127.0.0.1:6379/0")  # doctest: +SKIP
        >>> store.snapshot().version  # doctest: +SKIP
        0
    """

    def __init__(
        self,
        client: redis.Redis,
        url: str,
        *,
        create: bool = True,
        stream_maxlen: int = STREAM_MAXLEN,
    ) -> None:
        self.client = client
        self.url = url
        self.where = _redacted(url)
        self.origin = uuid.uuid4().hex[:12]  # this replica, in change-log entries
        self.stream_maxlen = stream_maxlen
        self._k = {
            name: PREFIX + name
            for name in ("version", "epoch", "spec", "cal", "tver", "artv", "vec", "changes")
        }
        self._seen: dict[str, int] = {}
        self._art_seen: dict[str, int] = {}
        self._seen_lock = threading.Lock()
        self._scripts = {
            "add": client.register_script(ADD_SCRIPT),
            "cal": client.register_script(UPDATE_CAL_SCRIPT),
            "del": client.register_script(REMOVE_SCRIPT),
            "art": client.register_script(PUT_ARTIFACT_SCRIPT),
        }
        with self._errors("open"):
            client.ping()
            if create:
                client.set(self._k["epoch"], uuid.uuid4().hex, nx=True)
            elif not client.exists(self._k["epoch"]):
                raise StoreError(
                    f"no registry at {self.where} (LETHE_REGISTRY_CREATE=false): it holds no "
                    f"{self._k['epoch']} key"
                )

    @classmethod
    def open(
        cls, url: str, *, create: bool = True, stream_maxlen: int = STREAM_MAXLEN
    ) -> RedisTargetStore:
        """Connect to `redis://[user:pass@]host:port/db` (rediss:// for TLS, unix:// for a
        socket). Query options of redis-py (`socket_timeout`, `socket_connect_timeout`, ...)
        override the defaults here: 2 s to connect, 5 s per reply, one immediate retry."""
        client = cls.client_for(url)
        return cls(client, url, create=create, stream_maxlen=stream_maxlen)

    @staticmethod
    def client_for(url: str, **overrides: Any) -> redis.Redis:
        """A client for `url` with the store's timeouts and retry policy."""
        # One retry on a fresh connection: a pooled connection is dead after a Redis restart.
        # The scripts are idempotent, so a retry after a lost reply does no harm.
        options: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "socket_timeout": SOCKET_TIMEOUT_S,
            "retry": Retry(NoBackoff(), 1),
            "health_check_interval": 30,
        }
        options.update(overrides)
        try:
            return redis.Redis.from_url(url, **options)
        except ValueError as exc:
            raise StoreError(f"invalid registry URL {_redacted(url)!r}: {exc}") from exc

    # --- errors -----------------------------------------------------------------------
    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(
                f"the shared registry at {self.where} is unreachable ({action}: {exc})"
            ) from exc
        except redis.RedisError as exc:
            raise StoreError(
                f"the shared registry at {self.where} failed ({action}: {exc})"
            ) from exc

    def _call(self, action: str, fn: Callable[[], Any]) -> Any:
        with self._errors(action):
            return fn()

    # --- local bookkeeping ----------------------------------------------------------------
    def seen_version(self, target_id: str) -> int:
        """The newest version of this target that this process wrote or applied (0: none)."""
        with self._seen_lock:
            return self._seen.get(target_id, 0)

    def note_version(self, target_id: str, version: int) -> None:
        """Remember that this process holds `target_id` at `version` (never goes back)."""
        with self._seen_lock:
            if version > self._seen.get(target_id, 0):
                self._seen[target_id] = version

    def seen_artifacts(self, target_id: str) -> int:
        """The newest artifact version of this target this process wrote or loaded (0: none)."""
        with self._seen_lock:
            return self._art_seen.get(target_id, 0)

    def note_artifacts(self, target_id: str, version: int) -> None:
        """Remember that this process holds the target's artifacts at `version`."""
        with self._seen_lock:
            if version > self._art_seen.get(target_id, 0):
                self._art_seen[target_id] = version

    def forget_versions(self) -> None:
        """Drop all bookkeeping (after the registry in Redis was reset)."""
        with self._seen_lock:
            self._seen.clear()
            self._art_seen.clear()

    # --- TargetStore ------------------------------------------------------------------------
    def _write(self, action: str, script: str, keys: list[str], args: list[Any]) -> int:
        with self._errors(action):
            return int(self._scripts[script](keys=keys, args=args))

    def _keys(self, *names: str) -> list[str]:
        return [self._k[n] for n in names]

    def add(self, target: Target, vectors: bytes | None = None) -> None:
        """Insert a target with its vectors, as one atomic change."""
        v = self._write(
            "add target",
            "add",
            self._keys("version", "spec", "cal", "tver", "vec", "changes"),
            [
                target.id,
                record_json(target),
                _calibration_to_json(target.calibration),
                vectors or b"",
                self.origin,
                self.stream_maxlen,
            ],
        )
        self.note_version(target.id, v)

    def update_calibration(
        self, target_id: str, calibration: Calibration, vectors: bytes | None = None
    ) -> bool:
        """Replace a target's derived state (and vectors, when given); False when it is gone."""
        v = self._write(
            "update calibration",
            "cal",
            self._keys("version", "spec", "cal", "tver", "vec", "changes"),
            [
                target_id,
                _calibration_to_json(calibration),
                vectors or b"",
                self.origin,
                self.stream_maxlen,
            ],
        )
        if v:
            self.note_version(target_id, v)
        return v > 0

    def remove(self, target_id: str) -> bool:
        """Delete a target, its vectors and artifacts; False when it did not exist."""
        v = self._write(
            "delete target",
            "del",
            [
                *self._keys("version", "spec", "cal", "tver", "vec", "changes"),
                self._art_key(target_id),
                self._k["artv"],
            ],
            [target_id, self.origin, self.stream_maxlen],
        )
        if v:
            self.note_version(target_id, v)
        return v > 0

    def _art_key(self, target_id: str) -> str:
        return f"{PREFIX}art:{target_id}"

    def put_artifact(self, target_id: str, kind: str, data: bytes) -> bool:
        """Store a target's binary state; False when the target is gone."""
        v = self._write(
            "store artifact",
            "art",
            [*self._keys("version", "spec", "artv", "changes"), self._art_key(target_id)],
            [target_id, kind, data, self.origin, self.stream_maxlen],
        )
        if v:
            self.note_artifacts(target_id, v)
        return v > 0

    def get_artifact(self, target_id: str, kind: str) -> bytes | None:
        """A stored artifact, or None."""
        data = self._call("read artifact", lambda: self.client.hget(self._art_key(target_id), kind))
        return None if data is None else bytes(data)

    def artifact_kinds(self, target_id: str) -> builtins.list[str]:
        """Kinds of artifact stored for a target."""
        keys = self._call("list artifacts", lambda: self.client.hkeys(self._art_key(target_id)))
        return sorted(text(k) for k in keys)

    def get_vectors(self, target_id: str) -> bytes | None:
        """A target's packed index vectors, or None."""
        data = self._call("read vectors", lambda: self.client.hget(self._k["vec"], target_id))
        return None if data is None else bytes(data)

    def get(self, target_id: str) -> Target | None:
        """One target by id."""
        record = self.get_record(target_id, with_vectors=False)
        return None if record is None else record.target

    def get_record(self, target_id: str, *, with_vectors: bool = True) -> Record | None:
        """A target with its version (and vectors), read atomically; None when it is gone."""

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=True)
            pipe.hget(self._k["spec"], target_id)
            pipe.hget(self._k["cal"], target_id)
            pipe.hget(self._k["tver"], target_id)
            if with_vectors:
                pipe.hget(self._k["vec"], target_id)
            result: list[Any] = pipe.execute()
            return result

        raw = self._call("read target", read)
        if raw[0] is None:
            return None
        try:
            target = decode_target(target_id, raw[0], raw[1])
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"the shared registry at {self.where} holds target {target_id} that cannot be "
                f"decoded: {exc}"
            ) from exc
        vectors = bytes(raw[3]) if with_vectors and raw[3] is not None else None
        return Record(target, int(raw[2] or 0), vectors)

    def list(self) -> builtins.list[Target]:
        """All targets, oldest first."""
        return [r.target for r in self.list_records()]

    def list_records(self) -> builtins.list[Record]:
        """All targets with their versions (no vectors), read atomically, oldest first."""

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=True)
            pipe.hgetall(self._k["spec"])
            pipe.hgetall(self._k["cal"])
            pipe.hgetall(self._k["tver"])
            result: list[Any] = pipe.execute()
            return result

        specs, cals, versions = self._call("list targets", read)
        records = []
        for raw_id, record in specs.items():
            target_id = text(raw_id)
            try:
                target = decode_target(target_id, record, cals.get(raw_id))
            except (ValueError, KeyError, TypeError) as exc:
                raise StoreError(
                    f"the shared registry at {self.where} holds target {target_id} that cannot "
                    f"be decoded: {exc}"
                ) from exc
            records.append(Record(target, int(versions.get(raw_id, 0)), None))
        records.sort(key=lambda r: (r.target.created_at, r.target.id))
        return records

    def vectors_many(self, target_ids: builtins.list[str]) -> builtins.list[bytes | None]:
        """Packed vectors of many targets (pipelined), in order."""
        out: builtins.list[bytes | None] = []
        for start in range(0, len(target_ids), 512):
            chunk = target_ids[start : start + 512]
            values = self._call("read vectors", partial(self.client.hmget, self._k["vec"], chunk))
            out.extend(None if v is None else bytes(v) for v in values)
        return out

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()

    # --- replication ------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Version, epoch, last change-log entry and every target's version, atomically."""

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=True)
            pipe.get(self._k["version"])
            pipe.get(self._k["epoch"])
            pipe.xrevrange(self._k["changes"], count=1)
            pipe.hgetall(self._k["tver"])
            pipe.hgetall(self._k["artv"])
            result: list[Any] = pipe.execute()
            return result

        version, epoch, last, versions, artifacts = self._call("snapshot", read)
        return Snapshot(
            version=int(version or 0),
            epoch=None if epoch is None else text(epoch),
            stream_id=text(last[0][0]) if last else "0-0",
            versions={text(k): int(v) for k, v in versions.items()},
            artifacts={text(k): int(v) for k, v in artifacts.items()},
        )

    def head(self) -> tuple[int, str | None]:
        """The registry's current version and epoch."""

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=True)
            pipe.get(self._k["version"])
            pipe.get(self._k["epoch"])
            result: list[Any] = pipe.execute()
            return result

        version, epoch = self._call("read version", read)
        return int(version or 0), None if epoch is None else text(epoch)

    def ensure_epoch(self) -> str:
        """The registry's epoch, creating one if Redis has none (after a reset)."""

        def run() -> Any:
            self.client.set(self._k["epoch"], uuid.uuid4().hex, nx=True)
            return self.client.get(self._k["epoch"])

        return text(self._call("epoch", run))

    def read_changes(
        self, client: redis.Redis, after: str, block_ms: int | None, count: int = 512
    ) -> builtins.list[Change]:
        """Change-log entries after stream id `after`, waiting up to `block_ms` for the first
        (None: answer at once) on `client`, a connection of the caller's own (a blocking read
        holds it)."""
        reply = self._call(
            "read changes",
            lambda: client.xread({self._k["changes"]: after}, count=count, block=block_ms),
        )
        changes: builtins.list[Change] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                f = {text(k): text(v) for k, v in fields.items()}
                changes.append(
                    Change(
                        stream_id=text(entry_id),
                        version=int(f.get("v", 0)),
                        op=f.get("op", ""),
                        target_id=f.get("id", ""),
                        kind=f.get("kind", ""),
                        origin=f.get("o", ""),
                    )
                )
        return changes


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
    return parsed._replace(netloc=netloc).geturl()
