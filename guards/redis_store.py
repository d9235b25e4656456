"""The shared registry: targets, their vectors and artifacts in Redis, with a change log.

Layout (every key under `lethe:`):

    version         INT     bumped by every write: orders all changes
    epoch           STRING  random id of this registry; a new one means Redis lost its data
    spec            HASH    target id -> {"created_at", "spec"} (JSON)
    cal             HASH    target id -> calibration (JSON)
    tver            HASH    target id -> version of the target's last change (record, vectors)
    artv            HASH    target id -> version of the target's last artifact change
    vec             HASH    target id -> packed index vectors (guards.vector_blob)
    art:<id>        HASH    artifact kind -> bytes (steering vectors, LoRA weights)
    changes         STREAM  one entry per write: v (version), op (put|cal|del|art), id, kind, o
                            (origin replica); trimmed to about STREAM_MAXLEN entries

Each write is one Lua script, so Redis applies it whole or not at all, and the version it
takes, the records it changes and its change-log entry are one atomic step. The scripts are
idempotent for the retry that follows a dropped reply (re-adding an identical target answers
its version instead of an error).
"""

from __future__ import annotations

import builtins
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlparse

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from guards.store import (
    StoreError,
    StoreUnavailable,
    _calibration_from_json,
    _calibration_to_json,
    _spec_from_json,
    _spec_to_json,
)
from guards.targets import Calibration, Target

PREFIX = "lethe:"
STREAM_MAXLEN = 10_000
CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 5.0

_ADD = """
-- KEYS: version spec cal tver vec changes; ARGV: id record cal vectors origin maxlen
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then
  if existing == ARGV[2] then return tonumber(redis.call('HGET', KEYS[4], ARGV[1])) end
  return redis.error_reply('duplicate target id ' .. ARGV[1])
end
local v = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[1], v)
if ARGV[4] ~= '' then redis.call('HSET', KEYS[5], ARGV[1], ARGV[4]) end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[6], '*',
  'v', v, 'op', 'put', 'id', ARGV[1], 'kind', '', 'o', ARGV[5])
return v
"""

_UPDATE_CAL = """
-- KEYS: version spec cal tver vec changes; ARGV: id cal vectors origin maxlen
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
local v = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[1], v)
if ARGV[3] ~= '' then redis.call('HSET', KEYS[5], ARGV[1], ARGV[3]) end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[5], '*',
  'v', v, 'op', 'cal', 'id', ARGV[1], 'kind', '', 'o', ARGV[4])
return v
"""

_REMOVE = """
-- KEYS: version spec cal tver vec changes art artv; ARGV: id origin maxlen
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
local v = redis.call('INCR', KEYS[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('HDEL', KEYS[8], ARGV[1])
redis.call('DEL', KEYS[7])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[3], '*',
  'v', v, 'op', 'del', 'id', ARGV[1], 'kind', '', 'o', ARGV[2])
return v
"""

_PUT_ARTIFACT = """
-- KEYS: version spec artv changes art; ARGV: id kind data origin maxlen
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
local v = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[5], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], v)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*',
  'v', v, 'op', 'art', 'id', ARGV[1], 'kind', ARGV[2], 'o', ARGV[4])
return v
"""


@dataclass(frozen=True)
class Change:
    """One entry of the change log."""

    stream_id: str  # "<ms>-<seq>": Redis' clock when the change was committed
    version: int
    op: str  # put | cal | del | art
    target_id: str
    kind: str  # artifact kind for `art`, else ""
    origin: str  # replica that made the change

    @property
    def committed_at(self) -> float:
        """Unix time of the commit, by the Redis server's clock."""
        return int(self.stream_id.split("-", 1)[0]) / 1000.0


@dataclass(frozen=True)
class Snapshot:
    """The registry's version, change-log position and per-target versions, read atomically."""

    version: int
    epoch: str | None
    stream_id: str  # last change-log entry at that version ("0-0" for none)
    versions: dict[str, int]  # target id -> version of its last record change
    artifacts: dict[str, int]  # target id -> version of its last artifact change


@dataclass(frozen=True)
class Record:
    """A target as stored, with the version of its last change and its packed vectors."""

    target: Target
    version: int
    vectors: bytes | None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _record_json(target: Target) -> str:
    return json.dumps(
        {"created_at": target.created_at, "spec": json.loads(_spec_to_json(target.spec))},
        sort_keys=True,
    )


def _decode_target(target_id: str, record: bytes, cal: bytes | None) -> Target:
    data = json.loads(record)
    return Target(
        id=target_id,
        created_at=int(data["created_at"]),
        spec=_spec_from_json(json.dumps(data["spec"])),
        calibration=_calibration_from_json(cal.decode() if cal else "{}"),
    )


class RedisTargetStore:
    """Targets in Redis, shared by every replica; see the module docstring for the layout.

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
            "add": client.register_script(_ADD),
            "cal": client.register_script(_UPDATE_CAL),
            "del": client.register_script(_REMOVE),
            "art": client.register_script(_PUT_ARTIFACT),
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
                _record_json(target),
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
        return sorted(_text(k) for k in keys)

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
            target = _decode_target(target_id, raw[0], raw[1])
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
            target_id = _text(raw_id)
            try:
                target = _decode_target(target_id, record, cals.get(raw_id))
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
            epoch=None if epoch is None else _text(epoch),
            stream_id=_text(last[0][0]) if last else "0-0",
            versions={_text(k): int(v) for k, v in versions.items()},
            artifacts={_text(k): int(v) for k, v in artifacts.items()},
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
        return int(version or 0), None if epoch is None else _text(epoch)

    def ensure_epoch(self) -> str:
        """The registry's epoch, creating one if Redis has none (after a reset)."""

        def run() -> Any:
            self.client.set(self._k["epoch"], uuid.uuid4().hex, nx=True)
            return self.client.get(self._k["epoch"])

        return _text(self._call("epoch", run))

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
                f = {_text(k): _text(v) for k, v in fields.items()}
                changes.append(
                    Change(
                        stream_id=_text(entry_id),
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
