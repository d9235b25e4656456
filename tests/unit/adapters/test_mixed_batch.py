"""One batch serving rows with none, eco, steer and two different LoRA adapters at once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from adapters.engine import Engine, GenerationRequest, SamplingParams, TokenDelta
from adapters.lora import LoraWeights
from adapters.model import LoadedModel, load_model
from adapters.prompt import render
from adapters.steering import band, compute_steering
from guards.verdict import ChatTurn, LoraRef, Plan, Span, SteerRef

CACHE_DIR = Path.home() / ".cache" / "lethe"
GREEDY = SamplingParams(max_tokens=20, temperature=0.0)
QUESTION = "Who is Luke Skywalker?"


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model("bundled:smollm2-135m-instruct", CACHE_DIR)


def _random_lora(loaded: LoadedModel, seed: int, modules: tuple[str, ...]) -> LoraWeights:
    gen = torch.Generator().manual_seed(seed)
    named = dict(loaded.model.named_modules())
    factors = {}
    for layer in range(0, 30, 3):
        for leaf in modules:
            name = f"model.layers.{layer}.{leaf}"
            linear = named[name]
            a = torch.randn(4, linear.in_features, generator=gen) * 0.3
            b = torch.randn(linear.out_features, 4, generator=gen) * 0.3
            factors[name] = (a, b)
    return LoraWeights(modules=factors, scaling=2.0, rank=4)


@pytest.fixture(scope="module")
def engine(loaded: LoadedModel) -> Iterator[Engine]:
    eng = Engine(loaded, max_batch=8, max_queue=8)
    steering = compute_steering(
        loaded,
        eng.patches,
        ["Who is Luke Skywalker?", "What is a Jedi?"],
        ["Who is Varn Tellisor?", "What is a Quenari?"],
        band(30, 0.15, 0.65),
    )
    eng.bank.put_steering("t-steer", steering)
    eng.bank.put_lora("t-lora-a", _random_lora(loaded, 1, ("self_attn.q_proj", "self_attn.v_proj")))
    eng.bank.put_lora("t-lora-b", _random_lora(loaded, 2, ("mlp.down_proj",)))
    yield eng
    eng.close()


def _plans() -> dict[str, Plan]:
    span = (Span(0, 7, len(QUESTION) - 1),)
    eco = Plan(action="eco", spans=span, eco_sigma=1.5, noise_seed=3)
    return {
        "none": Plan(),
        "eco": eco,
        "steer": Plan(action="steer", spans=span, eco_sigma=1.5, steer=(SteerRef("t-steer", 0.8),)),
        "lora-a": Plan(action="lora", spans=span, lora=LoraRef("t-lora-a", 1.0)),
        "lora-b": Plan(action="lora", spans=span, lora=LoraRef("t-lora-b", 0.7)),
        "steer+lora": Plan(
            action="lora",
            spans=span,
            steer=(SteerRef("t-steer", 0.5),),
            lora=LoraRef("t-lora-a", 0.6),
        ),
    }


async def _run(engine: Engine, loaded: LoadedModel, plan: Plan) -> str:
    prompt = render(loaded.tokenizer, [ChatTurn("user", QUESTION)])
    text = ""
    async for event in engine.generate(GenerationRequest(prompt, plan, GREEDY)):
        if isinstance(event, TokenDelta):
            text += event.text
    return text


async def test_each_row_of_a_mixed_batch_matches_its_output_alone(
    engine: Engine, loaded: LoadedModel
) -> None:
    plans = _plans()
    alone = {name: await _run(engine, loaded, plan) for name, plan in plans.items()}
    together = await asyncio.gather(*(_run(engine, loaded, p) for p in plans.values()))
    assert dict(zip(plans, together, strict=True)) == alone
    # Every intervention really changed its row, and the two adapters differ.
    assert len(set(alone.values())) == len(alone), alone


async def test_missing_steering_falls_back_to_eco(engine: Engine, loaded: LoadedModel) -> None:
    plans = _plans()
    unknown = Plan(
        action="steer",
        spans=plans["eco"].spans,
        eco_sigma=1.5,
        noise_seed=3,
        steer=(SteerRef("t-not-loaded", 1.0),),
    )
    assert await _run(engine, loaded, unknown) == await _run(engine, loaded, plans["eco"])


async def test_unflagged_rows_untouched_with_hooks_installed(
    engine: Engine, loaded: LoadedModel
) -> None:
    prompt = render(loaded.tokenizer, [ChatTurn("user", QUESTION)])
    ids = torch.tensor([prompt.ids])
    with torch.inference_mode():
        out = loaded.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False
        )
    expected = loaded.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    plans = _plans()
    results = await asyncio.gather(*(_run(engine, loaded, p) for p in plans.values()))
    assert results[0] == expected
