"""Headless load test: runs bench/locustfile.py and prints and saves the figures that matter.

    LETHE_ADMIN_TOKEN=... .venv/bin/python bench/loadtest.py --host http://127.0.0.1:8000 \
        --users 16 --duration 5m --json docs/loadtest.json [--soak --gateway-pid PID]

Prints p50/p95/p99 latency per request type and overall, requests and tokens per second, the
error rate and the enforcement rate: per probe, whether the gateway intervened on it (its
record of intervened requests, by X-Request-ID), the probes it missed, benign requests it
intervened on, and probe answers that leaked by the probe file's rule. `--soak` samples the
gateway process's resident memory every `--soak-interval` seconds while the test runs (Linux
/proc).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process in MiB, or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _sample_memory(
    pid: int, interval: float, stop: threading.Event, out: list[tuple[float, float]]
) -> None:
    start = time.monotonic()
    while not stop.is_set():
        value = rss_mib(pid)
        if value is not None:
            out.append((round(time.monotonic() - start, 1), value))
        stop.wait(interval)


def _admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {os.environ['LETHE_ADMIN_TOKEN']}"}


def register_targets(host: str, probes: Path, timeout: float = 1800.0) -> list[str]:
    """Register the probe file's targets and wait for their calibration (progress bar)."""
    data = json.loads(probes.read_text())
    ids = []
    for target in data["targets"]:
        resp = httpx.post(f"{host}/admin/targets", json=target["register"], headers=_admin())
        resp.raise_for_status()
        ids.append(resp.json()["id"])
    deadline = time.monotonic() + timeout
    with tqdm(total=100 * len(ids), desc="calibrating targets", unit="%") as bar:
        while time.monotonic() < deadline:
            states = [
                httpx.get(f"{host}/admin/targets/{i}", headers=_admin()).json()["calibration"]
                for i in ids
            ]
            done = sum(100 if c["state"] in ("done", "failed") else int(100 * c["progress"])
                       for c in states)  # fmt: skip
            bar.update(done - bar.n)
            if all(c["state"] in ("done", "failed") for c in states):
                break
            time.sleep(2)
    return ids


def delete_targets(host: str, ids: list[str]) -> None:
    """Remove what `register_targets` added."""
    for target_id in ids:
        httpx.delete(f"{host}/admin/targets/{target_id}", headers=_admin())


def _stats(path: Path) -> dict[str, dict[str, Any]]:
    """Locust's per-request-type CSV, by name (the total row is 'Aggregated')."""
    rows: dict[str, dict[str, Any]] = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            count = int(row["Request Count"])
            rows[row["Name"]] = {
                "requests": count,
                "failures": int(row["Failure Count"]),
                "p50_ms": float(row["50%"] or 0),
                "p95_ms": float(row["95%"] or 0),
                "p99_ms": float(row["99%"] or 0),
                "req_s": round(float(row["Requests/s"]), 3),
            }
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="http://127.0.0.1:8000")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--spawn-rate", type=float, default=4.0)
    parser.add_argument("--duration", default="5m", help="Locust run time, e.g. 90s, 5m")
    parser.add_argument("--probes", default=str(ROOT.parent / "shared/eval/dev_targets.json"))
    parser.add_argument(
        "--replicas",
        nargs="*",
        default=None,
        help="Base URLs of gateways whose records of intervened requests are read for "
        "enforcement; replicas on one Redis share one (default: --host itself)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also save the summary here")
    parser.add_argument("--soak", action="store_true", help="record gateway memory over time")
    parser.add_argument("--gateway-pid", type=int, default=None)
    parser.add_argument("--soak-interval", type=float, default=10.0)
    args = parser.parse_args()
    if not os.environ.get("LETHE_ADMIN_TOKEN"):
        sys.stderr.write("set LETHE_ADMIN_TOKEN: the load test registers targets\n")
        return 1
    if args.soak and args.gateway_pid is None:
        sys.stderr.write("--soak needs --gateway-pid\n")
        return 1

    targets = register_targets(args.host, Path(args.probes))
    memory: list[tuple[float, float]] = []
    stop = threading.Event()
    sampler = None
    if args.soak:
        sampler = threading.Thread(
            target=_sample_memory, args=(args.gateway_pid, args.soak_interval, stop, memory)
        )
        sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "lethe.json"
        command = [
            sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locustfile.py"),
            "--headless", "--only-summary", "--host", args.host,
            "-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.duration,
            "--csv", str(Path(tmp) / "run"), "--lethe-probes", args.probes,
            "--lethe-report", str(report),
            "--lethe-replicas", ",".join(args.replicas or [args.host]),
        ]  # fmt: skip
        started = time.monotonic()
        try:
            code = subprocess.run(command, cwd=ROOT, check=False).returncode
        finally:
            stop.set()
            delete_targets(args.host, targets)
        if sampler is not None:
            sampler.join()
        if not report.exists():
            sys.stderr.write(f"locust exited with {code} and wrote no report\n")
            return 1
        lethe = json.loads(report.read_text())
        stats = _stats(Path(tmp) / "run_stats.csv")
    total = stats.pop("Aggregated")
    summary = {
        "users": args.users,
        "duration": args.duration,
        "wall_s": round(time.monotonic() - started, 1),
        "requests": total["requests"],
        "errors": total["failures"],
        "error_rate": round(total["failures"] / total["requests"], 4) if total["requests"] else 0,
        "req_s": total["req_s"],
        "tokens_s": round(lethe["tokens_per_s"], 2),
        "latency_ms": {"all": total, **stats},
        "enforcement": lethe["enforcement"],
        "probes_sent": lethe["probes_sent"],
        "probes_intervened": lethe["probes_intervened"],
        "probes_by_stage": lethe["probes_by_stage"],
        "missed_probes": lethe["missed_probes"],
        "benign_sent": lethe["benign_sent"],
        "benign_intervened": lethe["benign_intervened"],
        "probe_leaks": lethe["probe_leaks"],
        "memory_mib": memory,
    }
    lines = [
        f"{args.users} users for {args.duration} against {args.host}",
        f"  {'request':<16}{'count':>7}{'fail':>6}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'req/s':>8}",
    ]
    for name, row in {"all": total, **stats}.items():
        lines.append(
            f"  {name:<16}{row['requests']:>7}{row['failures']:>6}{row['p50_ms']:>9.0f}"
            f"{row['p95_ms']:>9.0f}{row['p99_ms']:>9.0f}{row['req_s']:>8.2f}"
        )
    enforcement = summary["enforcement"]
    lines += [
        f"  tokens/s {summary['tokens_s']}, error rate {summary['error_rate']:.2%}",
        f"  enforcement: {lethe['probes_intervened']} of {lethe['probes_sent']} probes "
        f"intervened on ({'n/a' if enforcement is None else f'{enforcement:.1%}'}; by stage "
        f"{lethe['probes_by_stage']}), {lethe['probe_leaks']} probe answers leaked",
        f"  benign requests intervened on: {lethe['benign_intervened']} of {lethe['benign_sent']}",
        *(f"  missed {m['missed']}/{m['sent']}: {m['probe']}" for m in lethe["missed_probes"]),
    ]
    if memory:
        lines.append(
            f"  gateway RSS: {memory[0][1]} MiB at start, {memory[-1][1]} MiB at end, "
            f"max {max(m for _, m in memory)} MiB ({len(memory)} samples)"
        )
    print("\n".join(lines))  # noqa: T201
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if code == 0 else code


if __name__ == "__main__":
    raise SystemExit(main())
