"""How the shared registry lies in Redis: keys, write scripts and the records read back.

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
    interventions   ZSET    the record of intervened chat requests (app/interventions.py):
                            member "<seq> <JSON>", score seq; trimmed to the newest N
    interventions:seq INT   the last seq given out

Each write is one Lua script, so Redis applies it whole or not at all, and the version it
takes, the records it changes and its change-log entry are one atomic step. The scripts are
idempotent for the retry that follows a dropped reply (re-adding an identical target answers
its version instead of an error).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from guards.store import _calibration_from_json, _spec_from_json, _spec_to_json
from guards.targets import Target

PREFIX = "lethe:"
STREAM_MAXLEN = 10_000
INTERVENTION_RECORDS = PREFIX + "interventions"
INTERVENTION_SEQ = PREFIX + "interventions:seq"

RECORD_INTERVENTIONS_SCRIPT = """
-- KEYS: seq records; ARGV: capacity record-JSON...
local cap = tonumber(ARGV[1])
local last = 0
for i = 2, #ARGV do
  last = redis.call('INCR', KEYS[1])
  redis.call('ZADD', KEYS[2], last, last .. ' ' .. ARGV[i])
end
local n = redis.call('ZCARD', KEYS[2])
if n > cap then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - cap - 1) end
return last
"""

ADD_SCRIPT = """
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

UPDATE_CAL_SCRIPT = """
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

REMOVE_SCRIPT = """
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

PUT_ARTIFACT_SCRIPT = """
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


def text(value: Any) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def record_json(target: Target) -> str:
    """The stored form of a target's spec and creation time."""
    return json.dumps(
        {"created_at": target.created_at, "spec": json.loads(_spec_to_json(target.spec))},
        sort_keys=True,
    )


def decode_target(target_id: str, record: bytes, cal: bytes | None) -> Target:
    """A target from its stored record and calibration."""
    data = json.loads(record)
    return Target(
        id=target_id,
        created_at=float(data["created_at"]),
        spec=_spec_from_json(json.dumps(data["spec"])),
        calibration=_calibration_from_json(cal.decode() if cal else "{}"),
    )
