"""Intervention benchmark: a mixed batch against an all-unflagged one, and registration time.

Usage:

    .venv/bin/python bench/interventions.py --json docs/bench-interventions.json

1. mixed batch: 16 concurrent requests through the engine, a quarter each with no plan, ECO,
   steering and LoRA (two different adapters), against the same 16 prompts unflagged; rounds
   alternate and the best of each is kept (this machine is noisy). The ratio is what counts.
2. registration: per method, the time to the 201 (enforced from then on) and to a finished
   calibration (and, for lora, a trained adapter) through the admin API of an in-process app.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from adapters.engine import Engine, GenerationRequest, SamplingParams, TokenDelta  # noqa: E402
from adapters.lora import LoraWeights  # noqa: E402
from adapters.lora_training import TrainingConfig  # noqa: E402
from adapters.model import LoadedModel, load_model  # noqa: E402
from adapters.prompt import render  # noqa: E402
from adapters.steering import band, compute_steering  # noqa: E402
from guards.verdict import ChatTurn, LoraRef, Plan, Span, SteerRef  # noqa: E402

CACHE = Path.home() / ".cache" / "lethe"
PROMPTS = [
    f"Write a few sentences about {topic}."
    for topic in (
        "a lighthouse",
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
    )
]
STAR_WARS = {
    "name": "Star Wars",
    "aliases": ["Luke Skywalker", "Darth Vader", "Jedi"],
    "examples": ["Who is Luke Skywalker?", "Who is Darth Vader?", "What is a Jedi?"],
}


def _adapter(lm: LoadedModel, seed: int, rank: int) -> LoraWeights:
    """An adapter shaped like the ones the gateway trains (same modules and rank)."""
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for name, module in lm.model.named_modules():
        if (
            isinstance(module, torch.nn.Linear)
            and name.rsplit(".", 1)[-1] in TrainingConfig.modules
        ):
            a = torch.randn(rank, module.in_features, generator=gen) * 0.02
            b = torch.randn(module.out_features, rank, generator=gen) * 0.02
            modules[name] = (a, b)
    return LoraWeights(modules=modules, scaling=2.0, rank=rank)


def _plans() -> list[Plan]:
    """Four of each: none, eco, steer, lora (alternating between two adapters)."""
    span = (Span(0, 0, 30),)
    plans: list[Plan] = []
    for i in range(4):
        plans.append(Plan())
        plans.append(Plan(action="eco", spans=span, eco_sigma=1.5, noise_seed=i))
        plans.append(Plan(action="steer", spans=span, steer=(SteerRef("steer", 0.7),)))
        plans.append(Plan(action="lora", spans=span, lora=LoraRef(f"lora-{i % 2}", 1.0)))
    return plans


async def _batch(
    engine: Engine, lm: LoadedModel, plans: list[Plan], tokens: int
) -> tuple[float, int]:
    sampling = SamplingParams(max_tokens=tokens, temperature=0.0)

    async def one(text: str, plan: Plan) -> int:
        count = 0
        prompt = render(lm.tokenizer, [ChatTurn("user", text)])
        async for event in engine.generate(GenerationRequest(prompt, plan, sampling)):
            if not isinstance(event, TokenDelta):
                count += event.completion_tokens
        return count

    start = time.perf_counter()
    counts = await asyncio.gather(*(one(t, p) for t, p in zip(PROMPTS, plans, strict=True)))
    return time.perf_counter() - start, sum(counts)


async def mixed_batch(lm: LoadedModel, tokens: int, rounds: int) -> dict[str, Any]:
    engine = Engine(lm, max_batch=16, max_queue=64)
    layers = band(engine.patches.num_layers, 0.15, 0.65)
    engine.bank.put_steering(
        "steer",
        compute_steering(
            lm, engine.patches, ["Who is Luke Skywalker?"], ["Who is Varn Tellisor?"], layers
        ),
    )
    for i in range(2):
        engine.bank.put_lora(f"lora-{i}", _adapter(lm, i, 8))
    mixed, plain = _plans(), [Plan()] * 16
    await _batch(engine, lm, plain, 8)  # warm-up
    best = {"mixed": 0.0, "unflagged": 0.0}
    for _ in range(rounds):
        for name, plans in (("unflagged", plain), ("mixed", mixed)):
            seconds, count = await _batch(engine, lm, plans, tokens)
            best[name] = max(best[name], count / seconds)
    engine.close()
    return {
        "tokens_per_request": tokens,
        "rounds": rounds,
        "unflagged_tok_s": round(best["unflagged"], 1),
        "mixed_tok_s": round(best["mixed"], 1),
        "ratio": round(best["mixed"] / best["unflagged"], 3),
    }


async def registration(methods: list[str]) -> dict[str, Any]:
    from app.main import create_app
    from app.settings import Settings

    auth = {"Authorization": "Bearer bench"}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as data:
        app = create_app(Settings(admin_token="bench", data_dir=Path(data), log_format="text"))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://b", timeout=900
            ) as http:
                for method in methods:
                    start = time.perf_counter()
                    resp = await http.post(
                        "/admin/targets", json={**STAR_WARS, "intervention": method}, headers=auth
                    )
                    enforced = time.perf_counter() - start
                    target = resp.json()
                    while True:
                        target = (
                            await http.get(f"/admin/targets/{target['id']}", headers=auth)
                        ).json()
                        if target["calibration"]["state"] in ("done", "failed") and target[
                            "adapter"
                        ]["state"] in ("none", "ready", "failed"):
                            break
                        await asyncio.sleep(0.5)
                    out[method] = {
                        "enforced_s": round(enforced, 3),
                        "calibrated_s": round(time.perf_counter() - start, 1),
                        "method": target["method"],
                        "state": target["calibration"]["state"],
                    }
                    await http.delete(f"/admin/targets/{target['id']}", headers=auth)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", default="eco,steer,auto,lora,refuse")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    lm = load_model("bundled:smollm2-135m-instruct", CACHE)
    result: dict[str, Any] = {"mixed_batch": asyncio.run(mixed_batch(lm, args.tokens, args.rounds))}
    del lm
    if args.methods:
        result["registration"] = asyncio.run(registration(args.methods.split(",")))
    text = json.dumps(result, indent=2)
    print(text)  # noqa: T201
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
