"""Against a real `lethe serve` process: overload answers 429 (never 5xx, never a hang), the
server stays responsive while the model works, and a streaming client that disconnects frees
its row."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from _support import MODEL_ID, serve_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "LETHE_DATA_DIR": str(tmp_path_factory.mktemp("server")),
        "LETHE_ADMIN_TOKEN": "t",
        "LETHE_MAX_BATCH": "4",
        "LETHE_MAX_QUEUE": "8",
        "LETHE_LOG_LEVEL": "WARNING",
    }
    with serve_process(env) as base:
        yield base


async def _batch_size_when_settled(client: httpx.AsyncClient) -> int:
    """The engine's batch size once it reaches 0, or after 10 s of waiting."""
    busy = -1
    for _ in range(100):
        busy = int((await client.get("/health")).json()["batch_size"])
        if busy == 0:
            break
        await asyncio.sleep(0.1)
    return busy


def _body(max_tokens: int, stream: bool = False) -> dict[str, object]:
    return {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }


async def test_overload_answers_429_and_stays_responsive(server: str) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=300) as client:

        async def chat() -> httpx.Response:
            return await client.post("/v1/chat/completions", json=_body(16))

        tasks = [asyncio.ensure_future(chat()) for _ in range(120)]
        await asyncio.sleep(0.5)
        started = time.monotonic()
        health = await client.get("/health", timeout=10)
        health_latency = time.monotonic() - started
        responses = await asyncio.gather(*tasks)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) > 0 and statuses.count(200) > 0
    rejected = next(r for r in responses if r.status_code == 429)
    assert rejected.headers["retry-after"].isdigit()
    assert set(rejected.json()["error"]) == {"message", "type", "param", "code"}
    for r in responses:
        if r.status_code == 200:
            assert r.json()["usage"]["completion_tokens"] > 0  # every accepted one completed
    assert health.status_code == 200
    assert health_latency < 5.0


async def test_disconnected_stream_frees_its_row(server: str) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=300) as client:
        async with client.stream("POST", "/v1/chat/completions", json=_body(2000, True)) as r:
            assert r.status_code == 200
            chunks = 0
            async for line in r.aiter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    chunks += 1
                if chunks >= 3:
                    break  # leaving the block closes the connection
        assert await _batch_size_when_settled(client) == 0


async def test_disconnected_plain_request_frees_its_row(server: str) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=300) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/chat/completions", json=_body(2000), timeout=1.5)
        assert await _batch_size_when_settled(client) == 0
