"""Serving benchmark: gateway over HTTP vs `model.generate`, measured side by side in one run.

Usage (writes a Markdown table to stdout and JSON to --json):

    .venv/bin/python bench/throughput.py --tokens 64 --json docs/bench-throughput.json

Phases, each a ratio of two figures taken in this run on this machine:
1. throughput: aggregate generated tokens/s through HTTP at concurrency 1, 4, 16, 32 against
   `model.generate` on a static batch of the same prompts and size (in this process, while the
   gateway is idle);
2. overhead: one unflagged request through HTTP against an in-process `generate` of the same
   prompt and number of tokens;
3. intervention cost: the same prompts ECO-flagged (a target registered on them) against
   unflagged, same concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "smollm2-135m-instruct"
TOPICS = [
    "a lighthouse keeper",
    "a lost robot",
    "a dragon",
    "a baker",
    "a pirate ship",
    "a desert town",
    "an old clock",
    "a mountain village",
    "a detective",
    "a garden",
    "a train journey",
    "a snowy forest",
    "a city at night",
    "a river",
    "a library",
    "a space station",
    "a market",
    "a violinist",
    "a storm at sea",
    "a small cat",
    "a chess player",
    "an inventor",
    "a haunted house",
    "a festival",
    "a shipwreck",
    "a painter",
    "a farmer",
    "a bridge",
    "a volcano island",
    "a circus",
    "a submarine",
    "a castle",
]
MARKER = "Zorblax Quintavenue"


def prompts(n: int, flagged: bool = False) -> list[str]:
    """n story prompts (long answers); with `flagged`, each names the benchmark target."""
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        who = MARKER if flagged else "a traveller"
        out.append(f"Write a long story about {topic} and {who}, with many details.")
    return out


def chat_body(text: str, tokens: int) -> dict[str, Any]:
    """A greedy one-turn chat request."""
    return {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": tokens,
        "temperature": 0,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_batch(base: str, texts: list[str], tokens: int) -> tuple[float, int]:
    """Send all texts at once; return (seconds, completion tokens)."""
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:

        async def one(text: str) -> int:
            r = await client.post("/v1/chat/completions", json=chat_body(text, tokens))
            r.raise_for_status()
            return int(r.json()["usage"]["completion_tokens"])

        start = time.perf_counter()
        counts = await asyncio.gather(*(one(t) for t in texts))
        return time.perf_counter() - start, sum(counts)


def generate_batch(
    model: Any, tokenizer: Any, texts: list[str], tokens: int, stop: set[int]
) -> tuple[float, int]:
    """Static batch through `model.generate` (left-padded); return (seconds, new tokens)."""
    rendered = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False
        )
        for t in texts
    ]
    tokenizer.padding_side = "left"
    enc = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **enc, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    seconds = time.perf_counter() - start
    new = out[:, enc["input_ids"].shape[1] :]
    count = 0
    for row in new.tolist():
        for tok in row:
            count += 1
            if tok in stop:
                break
    return seconds, count


def register(base: str, body: dict[str, Any]) -> None:
    """Register a target and wait for its background calibration, which shares the engine."""
    headers = {"Authorization": "Bearer bench"}
    r = httpx.post(f"{base}/admin/targets", headers=headers, json=body, timeout=60)
    r.raise_for_status()
    for _ in range(600):
        target = httpx.get(f"{base}/admin/targets/{r.json()['id']}", headers=headers, timeout=30)
        if target.json()["calibration"]["state"] in ("done", "failed"):
            return
        time.sleep(1)


async def overload(base: str, tokens: int, requests: int = 200) -> dict[str, Any]:
    """`requests` chats at once against a queue of 32: only 200s and 429s, health stays fast."""
    async with httpx.AsyncClient(
        base_url=base, timeout=600, limits=httpx.Limits(max_connections=requests + 10)
    ) as client:

        async def one(text: str) -> int:
            r = await client.post("/v1/chat/completions", json=chat_body(text, tokens))
            return r.status_code

        tasks = [asyncio.ensure_future(one(t)) for t in prompts(requests)]
        await asyncio.sleep(1.0)
        start = time.perf_counter()
        health = await client.get("/health")
        health_s = time.perf_counter() - start
        statuses = await asyncio.gather(*tasks)
    counts: dict[str, int] = {}
    for code in statuses:
        counts[str(code)] = counts.get(str(code), 0) + 1
    return {
        "requests": requests,
        "statuses": counts,
        "health_s": health_s,
        "health_status": health.status_code,
    }


def wait_ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError("gateway exited during start-up")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("gateway did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per figure")
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data = Path(tempfile.mkdtemp(prefix="lethe-bench-"))
    env = {
        **os.environ,
        "LETHE_ADMIN_TOKEN": "bench",
        "LETHE_DATA_DIR": str(data),
        "LETHE_MAX_BATCH": str(max(args.concurrency)),
        "LETHE_MAX_QUEUE": "32",
        "LETHE_LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/lethe"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
    )
    results: dict[str, Any] = {"tokens": args.tokens, "throughput": [], "machine": os.cpu_count()}
    try:
        wait_ready(base, proc)
        from adapters.model import load_model
        from app.settings import Settings

        loaded = load_model(Settings().model, Settings().cache_dir)
        model, tok = loaded.model, loaded.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token_id = next(iter(loaded.stop_token_ids))
        asyncio.run(http_batch(base, prompts(2), 8))  # warm-up
        stop = set(loaded.stop_token_ids)
        generate_batch(model, tok, prompts(2), 8, stop)

        for c in args.concurrency:
            texts = prompts(c)
            # Alternate the two sides and keep each side's best round: the machine is noisy.
            http_rates, gen_rates = [], []
            for _ in range(args.rounds):
                http_s, http_tok = asyncio.run(http_batch(base, texts, args.tokens))
                http_rates.append(http_tok / http_s)
                gen_s, gen_tok = generate_batch(model, tok, texts, args.tokens, stop)
                gen_rates.append(gen_tok / gen_s)
            row = {
                "concurrency": c,
                "http_tok_s": max(http_rates),
                "generate_tok_s": max(gen_rates),
            }
            row["ratio"] = row["http_tok_s"] / row["generate_tok_s"]
            results["throughput"].append(row)
            sys.stderr.write(f"throughput c={c}: {row}\n")

        single = prompts(1)
        http_times, gen_times = [], []
        for _ in range(args.rounds + 2):
            s, n_http = asyncio.run(http_batch(base, single, args.tokens))
            http_times.append(s / max(n_http, 1))
            s, n_gen = generate_batch(model, tok, single, args.tokens, stop)
            gen_times.append(s / max(n_gen, 1))
        results["overhead"] = {
            "http_s_per_token": min(http_times),
            "generate_s_per_token": min(gen_times),
            "ratio": min(http_times) / min(gen_times),
        }

        c = 16 if 16 in args.concurrency else args.concurrency[-1]
        flagged = prompts(c, flagged=True)
        # An unrelated target first, so the detector does the same work in both phases and
        # the ratio isolates the intervention.
        register(base, {"name": "Quentin Marbleworth", "aliases": ["Marbleworth"]})
        plain = [asyncio.run(http_batch(base, flagged, args.tokens)) for _ in range(args.rounds)]
        register(base, {"name": MARKER, "aliases": ["Zorblax"], "intervention": "eco"})
        eco = [asyncio.run(http_batch(base, flagged, args.tokens)) for _ in range(args.rounds)]
        plain_spt = min(s / n for s, n in plain)
        eco_spt = min(s / n for s, n in eco)
        results["intervention"] = {
            "concurrency": c,
            "unflagged_s_per_token": plain_spt,
            "eco_s_per_token": eco_spt,
            "ratio": eco_spt / plain_spt,
        }
        results["overload"] = asyncio.run(overload(base, args.tokens))
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    lines = [
        f"Generated tokens per request: up to {args.tokens}; machine: {os.cpu_count()} CPUs.",
        "",
        "| concurrency | HTTP tok/s | generate tok/s | HTTP / generate |",
        "|---:|---:|---:|---:|",
    ]
    for row in results["throughput"]:
        lines.append(
            f"| {row['concurrency']} | {row['http_tok_s']:.1f} | {row['generate_tok_s']:.1f} "
            f"| {row['ratio']:.2f} |"
        )
    o, e = results["overhead"], results["intervention"]
    lines += [
        "",
        f"Single unflagged request, time per token: HTTP {o['http_s_per_token'] * 1000:.1f} ms, "
        f"in-process generate {o['generate_s_per_token'] * 1000:.1f} ms, "
        f"ratio {o['ratio']:.3f}.",
        f"ECO-flagged vs unflagged (concurrency {e['concurrency']}, same prompts), time per "
        f"token: ratio {e['ratio']:.3f}.",
        f"Overload: {results['overload']['requests']} concurrent requests, queue 32: statuses "
        f"{results['overload']['statuses']}; /health answered "
        f"{results['overload']['health_status']} in {results['overload']['health_s']:.2f} s "
        "under that load.",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
