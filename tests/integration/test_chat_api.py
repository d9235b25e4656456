"""The OpenAI-compatible surface, driven by the official `openai` SDK against the real app."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from _support import MODEL_ID, Gateway, assert_error_shape

pytestmark = pytest.mark.asyncio(loop_scope="session")

PROMPT = "What is the capital of France?"
STORY = "Write a long story about a dragon who loves tea."


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


async def complete(gw: Gateway, content: str, **kwargs: Any) -> Any:
    kwargs.setdefault("max_tokens", 12)
    return await gw.client.chat.completions.create(model=MODEL_ID, messages=user(content), **kwargs)


async def stream_chunks(gw: Gateway, content: str, **kwargs: Any) -> list[Any]:
    kwargs.setdefault("max_tokens", 12)
    stream = await gw.client.chat.completions.create(
        model=MODEL_ID, messages=user(content), stream=True, **kwargs
    )
    return [chunk async for chunk in stream]


def streamed_text(chunks: list[Any], index: int = 0) -> str:
    return "".join(
        c.delta.content or "" for chunk in chunks for c in chunk.choices if c.index == index
    )


def prompt_token_count(gw: Gateway, content: str) -> int:
    tokenizer = gw.services.engine.loaded.tokenizer
    text = tokenizer.apply_chat_template(user(content), add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


# --- successful completions -------------------------------------------------------------


async def test_non_streamed_chat_returns_text_and_consistent_usage(gateway: Gateway) -> None:
    resp = await complete(gateway, PROMPT, temperature=0)
    assert resp.object == "chat.completion"
    assert resp.model == MODEL_ID
    assert resp.id.startswith("chatcmpl-")
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in {"stop", "length"}
    usage = resp.usage
    assert usage.prompt_tokens == prompt_token_count(gateway, PROMPT)
    assert 1 <= usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_max_tokens_bounds_the_answer_and_reports_length(gateway: Gateway) -> None:
    resp = await complete(gateway, STORY, temperature=0, max_tokens=5)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 5
    tokenizer = gateway.services.engine.loaded.tokenizer
    assert len(tokenizer.encode(resp.choices[0].message.content, add_special_tokens=False)) <= 6


async def test_max_completion_tokens_is_honoured(gateway: Gateway) -> None:
    resp = await gateway.client.chat.completions.create(
        model=MODEL_ID, messages=user(STORY), temperature=0, max_completion_tokens=4
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 4


async def test_streaming_yields_role_then_content_then_one_finish(gateway: Gateway) -> None:
    chunks = await stream_chunks(gateway, PROMPT, temperature=0)
    assert chunks
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL_ID for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [
        (i, c.finish_reason) for i, ch in enumerate(chunks) for c in ch.choices if c.finish_reason
    ]
    assert len(finishes) == 1
    assert finishes[0][0] == len(chunks) - 1  # the finish chunk is the last one
    assert finishes[0][1] in {"stop", "length"}
    assert all(c.usage is None for c in chunks)  # no usage unless asked for
    assert streamed_text(chunks).strip()


async def test_stream_include_usage_sends_a_final_usage_chunk(gateway: Gateway) -> None:
    chunks = await stream_chunks(
        gateway, PROMPT, temperature=0, stream_options={"include_usage": True}
    )
    final = chunks[-1]
    assert final.choices == []
    assert final.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    whole = await complete(gateway, PROMPT, temperature=0)
    assert final.usage.prompt_tokens == whole.usage.prompt_tokens
    assert final.usage.completion_tokens == whole.usage.completion_tokens
    assert final.usage.total_tokens == final.usage.prompt_tokens + final.usage.completion_tokens


async def test_raw_sse_stream_is_well_formed_and_ends_with_done(gateway: Gateway) -> None:
    resp = await gateway.http.post(
        "/v1/chat/completions",
        json={"model": MODEL_ID, "messages": user(PROMPT), "stream": True, "max_tokens": 6},
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in resp.text.split("\n\n") if f]
    assert all(f.startswith("data: ") for f in frames)
    assert frames[-1] == "data: [DONE]"
    for frame in frames[:-1]:
        payload = json.loads(frame[len("data: ") :])
        assert payload["object"] == "chat.completion.chunk"


async def test_greedy_is_deterministic_and_equal_streamed_and_not(gateway: Gateway) -> None:
    first = await complete(gateway, PROMPT, temperature=0, max_tokens=10)
    second = await complete(gateway, PROMPT, temperature=0, max_tokens=10)
    chunks = await stream_chunks(gateway, PROMPT, temperature=0, max_tokens=10)
    text = first.choices[0].message.content
    assert text == second.choices[0].message.content
    assert streamed_text(chunks) == text
    assert chunks[-1].choices[0].finish_reason == first.choices[0].finish_reason


async def test_n_2_gives_two_choices(gateway: Gateway) -> None:
    resp = await complete(gateway, STORY, temperature=0, n=2, max_tokens=6)
    assert [c.index for c in resp.choices] == [0, 1]
    assert resp.choices[0].message.content == resp.choices[1].message.content  # greedy
    assert all(c.finish_reason == "length" for c in resp.choices)
    assert resp.usage.completion_tokens == 2 * 6  # counted over both choices


async def test_n_2_streamed_has_both_indices(gateway: Gateway) -> None:
    chunks = await stream_chunks(gateway, STORY, temperature=0, n=2, max_tokens=5)
    assert streamed_text(chunks, 0) and streamed_text(chunks, 0) == streamed_text(chunks, 1)
    finished = sorted(c.index for ch in chunks for c in ch.choices if c.finish_reason)
    assert finished == [0, 1]


async def test_seed_makes_sampling_reproducible(gateway: Gateway) -> None:
    kwargs = {"temperature": 1.2, "max_tokens": 8, "n": 2}
    a = await complete(gateway, STORY, seed=1234, **kwargs)
    b = await complete(gateway, STORY, seed=1234, **kwargs)
    texts = [c.message.content for c in a.choices]
    assert texts == [c.message.content for c in b.choices]
    other = await complete(gateway, STORY, seed=99, temperature=1.2, max_tokens=8)
    # The seed actually drives the sampling: other seeds (and the second choice) differ.
    assert len({*texts, other.choices[0].message.content}) > 1


async def test_seed_outside_64_bits_is_400(gateway: Gateway) -> None:
    for seed in (2**63, -(2**63) - 1, 2**64):
        resp = await gateway.http.post(
            "/v1/chat/completions",
            json={"model": MODEL_ID, "messages": user(PROMPT), "max_tokens": 2, "seed": seed},
        )
        assert resp.status_code == 400, resp.text
        assert_error_shape(resp.json(), param="seed")
    # The extremes are seeds, for every choice.
    for seed in (2**63 - 1, -(2**63)):
        resp = await complete(gateway, PROMPT, seed=seed, n=2, max_tokens=2, temperature=1.0)
        assert len(resp.choices) == 2


async def test_lone_surrogate_in_a_message_is_400(gateway: Gateway) -> None:
    # json.dumps sends the lone surrogate as the escape \ud800, which JSON parsers accept.
    body = json.dumps({"model": MODEL_ID, "messages": user("a" + chr(0xD800) + "b")})
    resp = await gateway.http.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400, resp.text
    assert_error_shape(resp.json(), param="messages")


async def test_stop_string_ends_the_text_before_the_stop(gateway: Gateway) -> None:
    full = (
        (await complete(gateway, PROMPT, temperature=0, max_tokens=10)).choices[0].message.content
    )
    words = full.split()
    assert len(words) >= 3, full
    stop = words[len(words) // 2]
    expected = full[: full.index(stop)]

    resp = await complete(gateway, PROMPT, temperature=0, max_tokens=10, stop=[stop, "@@@@"])
    assert resp.choices[0].message.content == expected
    assert resp.choices[0].finish_reason == "stop"
    assert stop not in resp.choices[0].message.content

    chunks = await stream_chunks(gateway, PROMPT, temperature=0, max_tokens=10, stop=stop)
    assert streamed_text(chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


# --- models and health ------------------------------------------------------------------


async def test_models_list_and_retrieve(gateway: Gateway) -> None:
    models = await gateway.client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert models.data[0].object == "model"
    card = await gateway.client.models.retrieve(MODEL_ID)
    assert card.id == MODEL_ID
    with pytest.raises(openai.NotFoundError) as err:
        await gateway.client.models.retrieve("gpt-4o")
    assert_error_shape(err.value.response.json(), code="model_not_found")


async def test_health(gateway: Gateway) -> None:
    resp = await gateway.http.get("/health")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok"
    assert body["model"] == MODEL_ID
    assert isinstance(body["targets"], int) and body["targets"] >= 0


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_unknown_model_is_404(gateway: Gateway, stream: bool) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await gateway.client.chat.completions.create(
            model="gpt-4o", messages=user(PROMPT), max_tokens=4, stream=stream
        )
    assert err.value.status_code == 404
    error = assert_error_shape(err.value.response.json(), code="model_not_found", param="model")
    assert "gpt-4o" in error["message"]


async def test_temperature_out_of_range_is_400(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await complete(gateway, PROMPT, temperature=5)
    assert err.value.status_code == 400
    assert_error_shape(err.value.response.json(), param="temperature")


async def test_n_out_of_range_is_400(gateway: Gateway) -> None:
    for n in (0, gateway.settings.max_n + 1):
        with pytest.raises(openai.BadRequestError) as err:
            await complete(gateway, PROMPT, n=n)
        assert err.value.status_code == 400
        error = assert_error_shape(err.value.response.json(), param="n")
        assert str(gateway.settings.max_n) in error["message"]


async def test_empty_messages_is_400(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await gateway.client.chat.completions.create(model=MODEL_ID, messages=[], max_tokens=4)
    assert_error_shape(err.value.response.json(), param="messages")


async def test_prompt_plus_max_tokens_beyond_context_is_400(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await complete(gateway, PROMPT, max_tokens=10**6)
    assert err.value.status_code == 400
    error = assert_error_shape(err.value.response.json(), code="context_length_exceeded")
    message = error["message"]
    context = gateway.services.engine.loaded.context_length
    assert str(context) in message
    assert str(10**6) in message
    assert str(prompt_token_count(gateway, PROMPT)) in message


async def test_prompt_longer_than_context_is_400(gateway: Gateway) -> None:
    context = gateway.services.engine.loaded.context_length
    with pytest.raises(openai.BadRequestError) as err:
        await complete(gateway, "hello " * (context + 10), max_tokens=None)
    error = assert_error_shape(err.value.response.json(), code="context_length_exceeded")
    assert str(context) in error["message"]


async def test_missing_messages_is_422(gateway: Gateway) -> None:
    resp = await gateway.http.post("/v1/chat/completions", json={"model": MODEL_ID})
    assert resp.status_code == 422
    error = assert_error_shape(resp.json())
    assert "messages" in error["message"]


async def test_wrong_field_type_is_422_via_sdk(gateway: Gateway) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as err:
        await gateway.client.chat.completions.create(
            model=MODEL_ID,
            messages=user(PROMPT),
            max_tokens="many",  # type: ignore[arg-type]
        )
    error = assert_error_shape(err.value.response.json())
    assert "max_tokens" in error["message"]


async def test_malformed_json_body_is_422_not_500(gateway: Gateway) -> None:
    resp = await gateway.http.post(
        "/v1/chat/completions",
        content=b'{"model": "smollm2-135m-instruct", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 422
    assert_error_shape(resp.json())


async def test_unknown_fields_are_tolerated(gateway: Gateway) -> None:
    resp = await gateway.http.post(
        "/v1/chat/completions",
        json={
            "model": MODEL_ID,
            "messages": user(PROMPT),
            "max_tokens": 3,
            "logit_bias": {},
            "some_future_option": True,
        },
    )
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/nope"), ("POST", "/v1/chat/completion"), ("GET", "/nothing/here")],
)
async def test_unknown_route_is_404_json(gateway: Gateway, method: str, path: str) -> None:
    resp = await gateway.http.request(method, path)
    assert resp.status_code == 404
    assert_error_shape(resp.json(), code="not_found")
