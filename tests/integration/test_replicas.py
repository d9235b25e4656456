"""Two real gateways sharing one real Redis: replica A (`lethe serve`) and replica B
(`lethe serve --workers 2`, fail-closed). A target registered on one is enforced on the other
(every worker); concurrent registrations and deletions on both end consistent; a silent change
(a gap in the change log) is found; and when the Redis the test started is killed, replicas
keep enforcing, report degraded, refuse admin writes with 503, B refuses chat once stale, and
all of them resync when Redis is back."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from _redis_server import RedisServer, free_port
from _support import MODEL_ID, REPO_ROOT, assert_error_shape

pytestmark = pytest.mark.slow

TOKEN = "t"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
REFUSAL = "I'm sorry, but I can't help with that."
MAX_STALENESS_S = 3


@dataclass
class Cluster:
    redis: RedisServer
    a: str  # base URL of replica A
    b: str  # base URL of replica B (two worker processes behind one port)
    b_workers: int

    def raw(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url())


def _start(port: int, env: dict[str, str], workers: int, log: Path) -> subprocess.Popen[bytes]:
    lethe = Path(sys.executable).parent / "lethe"
    args = [str(lethe), "serve", "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        args += ["--workers", str(workers)]
    with log.open("wb") as out:
        return subprocess.Popen(args, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)


def fresh(base: str) -> httpx.Client:
    """A client that opens a new connection per request, so requests to a multi-worker
    replica spread over its workers."""
    return httpx.Client(
        base_url=base,
        timeout=120,
        headers={"Connection": "close"},
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def workers_seen(base: str, want: int, timeout: float = 300) -> set[str]:
    """Replica ids answering /health at `base`, polled until `want` distinct ones answered."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    with fresh(base) as client:
        while len(seen) < want:
            if time.monotonic() > deadline:
                pytest.fail(f"{base}: {len(seen)} of {want} workers came up")
            try:
                r = client.get("/health", timeout=5)
                if r.status_code == 200:
                    seen.add(r.json()["registry"]["replica"])
                    continue
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
    return seen


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("replicas")
    server = RedisServer(tmp / "redis")
    server.start()
    env = {
        **os.environ,
        "LETHE_REGISTRY_URL": server.url(),
        "LETHE_ADMIN_TOKEN": TOKEN,
        "LETHE_CALIBRATION_WORKERS": "0",  # no background model work: registration is the point
        "LETHE_TORCH_THREADS": "1",
        "LETHE_MAX_BATCH": "4",
        "LETHE_LOG_LEVEL": "WARNING",
        "LETHE_DATA_DIR": str(tmp / "data"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    port_a, port_b = free_port(), free_port()
    procs = [
        _start(port_a, env, 1, tmp / "a.log"),
        _start(
            port_b,
            {**env, "LETHE_FAIL_CLOSED": "true", "LETHE_MAX_STALENESS_S": str(MAX_STALENESS_S)},
            2,
            tmp / "b.log",
        ),
    ]
    a, b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    try:
        for proc, base, workers in ((procs[0], a, 1), (procs[1], b, 2)):
            assert proc.poll() is None, f"{base} exited during start-up"
            workers_seen(base, workers)
        yield Cluster(server, a, b, 2)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()


# --- helpers ----------------------------------------------------------------------------------


def eventually(check: Callable[[], bool], timeout: float = 15, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out: {what}")
        time.sleep(0.05)


def flagged(client: httpx.Client, text: str) -> set[str]:
    r = client.post("/admin/classify", json={"text": text}, headers=ADMIN)
    assert r.status_code == 200, r.text
    return {m["target_id"] for m in r.json()["matches"]}


def on_every_worker(base: str, check: Callable[[httpx.Client], bool], times: int = 8) -> bool:
    """`check` holds on `times` requests in a row, each on a new connection."""
    with fresh(base) as client:
        return all(check(client) for _ in range(times))


def register(client: httpx.Client, name: str, **fields: Any) -> dict[str, Any]:
    r = client.post("/admin/targets", json={"name": name, **fields}, headers=ADMIN)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def chat(
    client: httpx.Client, text: str, max_tokens: int = 4, request_id: str | None = None
) -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        headers={"X-Request-ID": request_id} if request_id else {},
        json={
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
    )


def recorded(client: httpx.Client) -> list[dict[str, Any]]:
    """Every record of intervened requests the replica can read."""
    r = client.get("/admin/interventions", params={"limit": 1000}, headers=ADMIN)
    assert r.status_code == 200, r.text
    records: list[dict[str, Any]] = r.json()["data"]
    return records


def redis_version(cluster: Cluster) -> int:
    raw = cluster.raw()
    try:
        return int(raw.get("lethe:version") or 0)
    finally:
        raw.close()


def converged(cluster: Cluster) -> bool:
    """Every replica (each worker of B) reports the version Redis holds."""
    version = redis_version(cluster)
    return all(
        on_every_worker(
            base,
            lambda c: c.get("/health").json()["registry"]["version"] == version,
            times=6,
        )
        for base in (cluster.a, cluster.b)
    )


def resyncs(base: str) -> int:
    """Most resyncs any worker at `base` reports (a few requests, new connections)."""
    with fresh(base) as client:
        return max(int(client.get("/health").json()["registry"]["resyncs"]) for _ in range(6))


def index_size(target: dict[str, Any]) -> int:
    """Vectors a target contributes (no calibration ran, so no expansion)."""
    return 1 + len(target["aliases"]) + len(target["examples"]) + bool(target["description"])


# --- tests ------------------------------------------------------------------------------------


def test_registration_on_one_replica_is_enforced_on_the_other(cluster: Cluster) -> None:
    with fresh(cluster.a) as a, fresh(cluster.b) as b:
        target = register(a, "Zorblax Quintavenue", aliases=["Zorblax"], intervention="refuse")
        eventually(
            lambda: on_every_worker(
                cluster.b, lambda c: flagged(c, "Tell me about Zorblax, please.") == {target["id"]}
            ),
            what="B's workers flagging the target registered on A",
        )
        for n, client in enumerate((a, b, b)):
            r = chat(client, "Who is Zorblax Quintavenue?", request_id=f"shared-record-{n}")
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == REFUSAL
        # The record of intervened requests is shared: A answers for B's workers too.
        eventually(
            lambda: (
                {
                    (r["request_id"], r["stage"], r["action"], tuple(r["target_ids"]))
                    for r in recorded(a)
                    if r["request_id"].startswith("shared-record-")
                }
                == {(f"shared-record-{n}", "prompt", "refuse", (target["id"],)) for n in range(3)}
            ),
            what="A's record holding the requests B intervened on",
        )
        listed = b.get(f"/admin/targets/{target['id']}", headers=ADMIN)
        assert listed.status_code == 200 and listed.json()["name"] == "Zorblax Quintavenue"

        other = register(b, "Plimbertine Oxwaddle", intervention="refuse")
        eventually(
            lambda: flagged(a, "Who is Plimbertine Oxwaddle?") == {other["id"]},
            what="A flagging the target registered on B",
        )
        assert b.delete(f"/admin/targets/{other['id']}", headers=ADMIN).status_code == 204
        eventually(lambda: flagged(a, "Who is Plimbertine Oxwaddle?") == set(), what="deletion")
        assert a.get(f"/admin/targets/{other['id']}", headers=ADMIN).status_code == 404


def test_concurrent_registrations_and_deletions_on_both_replicas(cluster: Cluster) -> None:
    with fresh(cluster.a) as a:
        seeds = [register(a, f"Seed target {i} Vexillary")["id"] for i in range(10)]

    registered: list[str] = []
    deleted: list[str] = []
    ephemeral: list[str] = []

    async def race() -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        async with (
            httpx.AsyncClient(base_url=cluster.a, timeout=120, limits=limits) as a,
            httpx.AsyncClient(base_url=cluster.b, timeout=120, limits=limits) as b,
        ):

            async def add(client: httpx.AsyncClient, name: str) -> str:
                body = {"name": name, "aliases": [f"{name} alias"], "examples": [f"Who is {name}?"]}
                r = await client.post("/admin/targets", json=body, headers=ADMIN)
                assert r.status_code == 201, r.text
                registered.append(r.json()["id"])
                return str(r.json()["id"])

            async def delete(client: httpx.AsyncClient, target_id: str) -> None:
                r = await client.delete(f"/admin/targets/{target_id}", headers=ADMIN)
                assert r.status_code in (204, 404), r.text
                if r.status_code == 204:
                    deleted.append(target_id)

            async def add_then_delete_elsewhere(n: int) -> None:
                target_id = await add(a if n % 2 else b, f"Ephemeral target {n} Quillwort")
                ephemeral.append(target_id)
                await delete(b if n % 2 else a, target_id)  # it may not have arrived there yet

            jobs = [add(a if i % 2 else b, f"Race target {i} Hornwrack") for i in range(40)]
            jobs += [delete(a if i < 5 else b, seeds[i]) for i in range(10)]
            jobs += [delete(b if i < 5 else a, seeds[i]) for i in range(0, 10, 3)]  # same again
            jobs += [add_then_delete_elsewhere(n) for n in range(8)]
            await asyncio.gather(*jobs)

    asyncio.run(race())
    assert len(registered) == len(set(registered)) == 48
    assert set(deleted) == set(seeds) | set(ephemeral)  # every deletion was acknowledged
    expected = (set(seeds) | set(registered)) - set(deleted)
    assert len(expected) == 40
    eventually(lambda: converged(cluster), timeout=30, what="replicas converging")

    def listing_is_exact(client: httpx.Client) -> bool:
        r = client.get("/admin/targets", headers=ADMIN)
        ids = [t["id"] for t in r.json()["data"]]
        health = client.get("/health").json()
        mine = [t for t in r.json()["data"] if t["id"] in expected]
        return (
            len(ids) == len(set(ids))
            and expected <= set(ids)
            and not (set(ids) & set(deleted))
            and health["index_vectors"] == sum(index_size(t) for t in r.json()["data"])
            and len(mine) == len(expected)
        )

    for base in (cluster.a, cluster.b):
        assert on_every_worker(base, listing_is_exact)
    raw = cluster.raw()
    in_redis = {k.decode() for k in raw.hkeys("lethe:spec")}
    raw.close()
    assert expected <= in_redis and not (in_redis & set(deleted))
    with fresh(cluster.b) as b:
        listed = b.get("/admin/targets", headers=ADMIN).json()["data"]
        race7 = next(t["id"] for t in listed if t["name"] == "Race target 7 Hornwrack")
        assert race7 in flagged(b, "Who is Race target 7 Hornwrack?")
        assert seeds[4] not in flagged(b, "Who is Seed target 4 Vexillary?")


def test_a_change_without_a_log_entry_is_found_by_a_resync(cluster: Cluster) -> None:
    with fresh(cluster.a) as a:
        target = register(a, "Gradgrind Wimbleton", intervention="refuse")
    eventually(
        lambda: on_every_worker(
            cluster.b, lambda c: flagged(c, "Who is Gradgrind Wimbleton?") == {target["id"]}
        ),
        what="propagation",
    )
    before = {base: resyncs(base) for base in (cluster.a, cluster.b)}
    raw = cluster.raw()
    pipe = raw.pipeline(transaction=True)  # a deletion whose change-log entry was lost
    for key in ("lethe:spec", "lethe:cal", "lethe:tver", "lethe:vec"):
        pipe.hdel(key, target["id"])
    pipe.incr("lethe:version")
    pipe.execute()
    raw.close()
    for base in (cluster.a, cluster.b):
        eventually(
            lambda base=base: on_every_worker(
                base, lambda c: flagged(c, "Who is Gradgrind Wimbleton?") == set()
            ),
            what=f"{base} finding the silent deletion",
        )
        assert resyncs(base) > before[base]


def test_redis_outage_and_recovery(cluster: Cluster) -> None:
    with fresh(cluster.a) as a, fresh(cluster.b) as b:
        target = register(a, "Quenby Marrowfat", aliases=["Marrowfat"], intervention="refuse")
        eventually(
            lambda: on_every_worker(
                cluster.b, lambda c: flagged(c, "Who is Quenby Marrowfat?") == {target["id"]}
            ),
            what="propagation before the outage",
        )
        cluster.redis.stop(kill=True)
        down_at = time.monotonic()

        # A: degraded, still enforcing, admin writes refused whole.
        eventually(
            lambda: a.get("/health").json()["status"] == "degraded", what="A reporting degraded"
        )
        health = a.get("/health").json()
        assert health["registry"]["connected"] is False
        assert health["registry"]["error"]
        time.sleep(0.3)
        assert a.get("/health").json()["registry"]["staleness_s"] > 0.2
        r = a.post("/admin/targets", json={"name": "Written During Outage"}, headers=ADMIN)
        assert r.status_code == 503
        error = assert_error_shape(r.json(), code="registry_unavailable")
        assert "registry" in error["message"] and "nothing was changed" in error["message"]
        r = a.delete(f"/admin/targets/{target['id']}", headers=ADMIN)
        assert r.status_code == 503
        assert_error_shape(r.json(), code="registry_unavailable")
        names = {t["name"] for t in a.get("/admin/targets", headers=ADMIN).json()["data"]}
        assert "Quenby Marrowfat" in names and "Written During Outage" not in names
        r = chat(a, "Who is Quenby Marrowfat?", request_id="during-outage")
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == REFUSAL
        r = a.get("/admin/interventions", headers=ADMIN)  # the shared record is in Redis
        assert r.status_code == 503
        assert_error_shape(r.json(), code="unavailable")
        r = chat(a, "What is the capital of France?", max_tokens=2)
        assert r.status_code == 200  # fail-open replica keeps serving

        # B (fail-closed): chat refused once its registry is staler than the bound.
        time.sleep(max(0.0, MAX_STALENESS_S + 0.5 - (time.monotonic() - down_at)))
        for _ in range(4):
            r = chat(b, "Who is Quenby Marrowfat?")
            assert r.status_code == 503, r.text
            error = assert_error_shape(r.json(), code="unavailable")
            assert "registry" in error["message"] and "Quenby" not in error["message"]
        assert b.get("/health").json()["status"] == "degraded"

        cluster.redis.start()
        for base in (cluster.a, cluster.b):
            eventually(
                lambda base=base: on_every_worker(
                    base, lambda c: c.get("/health").json()["status"] == "ok"
                ),
                timeout=30,
                what=f"{base} back in sync",
            )
        raw = cluster.raw()
        stored = [v.decode() for v in raw.hvals("lethe:spec")]
        raw.close()
        assert not any("Written During Outage" in v for v in stored)
        assert any("Quenby Marrowfat" in v for v in stored)
        r = chat(b, "Who is Quenby Marrowfat?")
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == REFUSAL
        # The record A queued while Redis was down was written once it came back.
        eventually(
            lambda: [r["request_id"] for r in recorded(b)].count("during-outage") >= 1,
            timeout=30,
            what="the record kept through the outage",
        )
        later = register(a, "Written After Outage Tumbleweed", intervention="refuse")
        eventually(
            lambda: on_every_worker(
                cluster.b,
                lambda c: flagged(c, "Who is Written After Outage Tumbleweed?") == {later["id"]},
            ),
            what="propagation after the outage",
        )
