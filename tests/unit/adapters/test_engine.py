"""Engine behaviour on the real bundled model: batching equivalence, per-row plans, cancellation."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from adapters.engine import Engine, GenerationRequest, SamplingParams, TokenDelta
from adapters.model import LoadedModel, load_model
from adapters.prompt import render
from adapters.sampling import row_generator
from guards.verdict import ChatTurn, Plan, Span

CACHE_DIR = Path.home() / ".cache" / "lethe"
GREEDY = SamplingParams(max_tokens=24, temperature=0.0)
PROMPTS = [
    "Who was Neil Armstrong?",
    "hi",
    "Write a short story about a dragon who learns to fly over the snowy mountains.",
    "What is 7 times 8?",
    "Explain photosynthesis to a ten year old, with an example from a garden.",
]


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model("bundled:smollm2-135m-instruct", CACHE_DIR)


@pytest.fixture(scope="module")
def engine(loaded: LoadedModel) -> Iterator[Engine]:
    eng = Engine(loaded, max_batch=8, max_queue=4)
    yield eng
    eng.close()


def _request(
    loaded: LoadedModel,
    text: str,
    plan: Plan | None = None,
    sampling: SamplingParams = GREEDY,
    n: int = 1,
) -> GenerationRequest:
    prompt = render(loaded.tokenizer, [ChatTurn("user", text)])
    return GenerationRequest(prompt, plan or Plan(), sampling, n)


async def _run(engine: Engine, request: GenerationRequest) -> tuple[list[str], list[str]]:
    texts = [""] * request.n
    reasons = [""] * request.n
    async for event in engine.generate(request):
        if isinstance(event, TokenDelta):
            texts[event.row] += event.text
        else:
            reasons[event.row] = event.reason
    return texts, reasons


def _eco(text: str) -> Plan:
    return Plan(action="eco", spans=(Span(0, 0, len(text)),), eco_sigma=2.0, noise_seed=7)


async def test_greedy_rows_are_identical_alone_and_batched(
    engine: Engine, loaded: LoadedModel
) -> None:
    alone = [(await _run(engine, _request(loaded, p)))[0][0] for p in PROMPTS]
    eco_alone = (await _run(engine, _request(loaded, PROMPTS[0], _eco(PROMPTS[0]))))[0][0]
    # Same prompts at once, of different lengths, with an ECO row mixed in.
    batched = await asyncio.gather(
        *(_run(engine, _request(loaded, p)) for p in PROMPTS),
        _run(engine, _request(loaded, PROMPTS[0], _eco(PROMPTS[0]))),
    )
    assert [b[0][0] for b in batched[: len(PROMPTS)]] == alone
    assert batched[-1][0][0] == eco_alone
    assert eco_alone != alone[0]  # the plan really changed that row


async def test_unflagged_row_matches_transformers_generate(
    engine: Engine, loaded: LoadedModel
) -> None:
    request = _request(loaded, PROMPTS[0])
    ids = torch.tensor([request.prompt.ids])
    with torch.inference_mode():
        out = loaded.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False
        )
    expected = loaded.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert (await _run(engine, request))[0][0] == expected


async def test_seeded_sampling_ignores_batch_companions(
    engine: Engine, loaded: LoadedModel
) -> None:
    sampled = SamplingParams(max_tokens=16, temperature=1.0, seed=11)
    alone = await _run(engine, _request(loaded, PROMPTS[2], sampling=sampled, n=2))
    together = await asyncio.gather(
        _run(engine, _request(loaded, PROMPTS[2], sampling=sampled, n=2)),
        _run(engine, _request(loaded, PROMPTS[4])),
    )
    assert together[0] == alone
    assert alone[0][0] != alone[0][1]  # n rows get different seeds


async def test_stop_and_length_reasons(engine: Engine, loaded: LoadedModel) -> None:
    texts, reasons = await _run(engine, _request(loaded, PROMPTS[0]))
    assert reasons == ["length"]
    word = texts[0].split()[3]
    stopped, reasons = await _run(
        engine,
        _request(loaded, PROMPTS[0], sampling=SamplingParams(24, 0.0, stop=(word,))),
    )
    assert reasons == ["stop"]
    assert stopped[0] == texts[0][: texts[0].index(word)]


async def test_cancelled_request_frees_its_row(engine: Engine, loaded: LoadedModel) -> None:
    long = _request(loaded, PROMPTS[2], sampling=SamplingParams(max_tokens=400, temperature=0.0))
    seen = 0
    stream = engine.generate(long)
    async for event in stream:
        if isinstance(event, TokenDelta):
            seen += 1
        if seen >= 3:
            break
    await stream.aclose()  # the client went away
    for _ in range(100):
        if engine.batch_size == 0:
            break
        await asyncio.sleep(0.05)
    assert engine.batch_size == 0
    # The engine still serves others.
    assert (await _run(engine, _request(loaded, PROMPTS[1])))[1] in (["stop"], ["length"])


async def test_queue_reports_capacity(engine: Engine, loaded: LoadedModel) -> None:
    assert engine.has_capacity()
    requests = [
        _request(loaded, PROMPTS[3], sampling=SamplingParams(max_tokens=8, temperature=0.0), n=8)
        for _ in range(6)
    ]
    tasks = [asyncio.ensure_future(_run(engine, r)) for r in requests]
    await asyncio.sleep(0.2)
    full = not engine.has_capacity()
    results = await asyncio.gather(*tasks)
    assert full  # 1 running (8 rows = max_batch) + 5 waiting > max_queue of 4
    assert all(len(texts) == 8 for texts, _ in results)  # every accepted request completes
    assert engine.has_capacity()


def test_any_int_seed_seeds_a_row() -> None:
    """torch raises outside [-2**63, 2**64); a row's seed never does (it is taken mod 2**64,
    as torch does inside that range), so no request can fail a batch step it shares."""

    def draws(seed: int, row: int = 0) -> list[float]:
        gen = row_generator(SamplingParams(max_tokens=1, seed=seed), row)
        return torch.rand(3, generator=gen).tolist()

    assert draws(2**64 - 1, row=1) == draws(0)
    assert draws(-1) == draws(2**64 - 1)
    assert draws(2**70) == draws(0)


async def test_a_request_failing_at_prefill_fails_alone(
    engine: Engine, loaded: LoadedModel
) -> None:
    good = _request(loaded, "Who was Neil Armstrong?")
    alone = await _run(engine, good)
    # Token ids past the vocabulary: the embedding lookup fails during this request's prefill.
    vocab = loaded.model.get_input_embeddings().num_embeddings
    broken = dataclasses.replace(good.prompt, ids=[vocab + 7] * len(good.prompt.ids))
    bad = GenerationRequest(broken, Plan(), GREEDY, 1)
    results = await asyncio.gather(_run(engine, bad), _run(engine, good), return_exceptions=True)
    assert isinstance(results[0], Exception)
    assert results[1] == alone
