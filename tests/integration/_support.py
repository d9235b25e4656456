"""Shared constants and helpers of the integration tests (also imported by subprocesses)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guards.targets import Intervention, TargetSpec

if TYPE_CHECKING:  # kept light: crash-test subprocesses import this module
    import httpx
    import openai
    from fastapi import FastAPI

    from app.deps import Services
    from app.settings import Settings

MODEL_ID = "smollm2-135m-instruct"
ADMIN_TOKEN = "test-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Converted weights and corpus embeddings survive between sessions here.
CACHE_DIR = Path.home() / ".cache" / "lethe"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Gateway:
    """A running test app and its clients."""

    app: FastAPI
    settings: Settings
    client: openai.AsyncOpenAI  # the official SDK, base_url http://test/v1
    http: httpx.AsyncClient  # raw client, base_url http://test

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services


def asgi_client(app: FastAPI) -> httpx.AsyncClient:
    """A raw client talking to the app in-process (no lifespan: the caller runs it)."""
    import httpx

    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=600
    )


def sdk_client(app: FastAPI) -> openai.AsyncOpenAI:
    """The official SDK talking to the app in-process."""
    import openai

    return openai.AsyncOpenAI(
        base_url="http://test/v1", api_key="x", http_client=asgi_client(app), max_retries=0
    )


def gateway_settings(data_dir: Path, **overrides: object) -> Settings:
    """Test settings: admin token, private data dir, persistent model/corpus cache."""
    from app.settings import Settings

    values: dict[str, object] = {
        "admin_token": ADMIN_TOKEN,
        "data_dir": data_dir,
        "cache_dir": CACHE_DIR,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[Gateway]:
    """A gateway app on `settings`, its lifespan entered, with the SDK and a raw client."""
    from app.main import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        client = sdk_client(app)
        async with asgi_client(app) as http:
            try:
                yield Gateway(app=app, settings=settings, client=client, http=http)
            finally:
                await client.close()


async def answer_of(gw: Gateway, question: str, stream: bool, request_id: str = "") -> str:
    """The greedy 32-token answer to one user question through the SDK, streamed or not."""
    kwargs = {
        "extra_headers": {"X-Request-ID": request_id} if request_id else {},
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 32,
    }
    if not stream:
        resp = await gw.client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
        return str(resp.choices[0].message.content)
    chunks = await gw.client.chat.completions.create(stream=True, **kwargs)  # type: ignore[call-overload]
    return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])


def assert_error_shape(body: Any, *, code: str | None = None, param: str | None = None) -> dict:
    """OpenAI's error envelope: exactly message/type/param/code, with a useful message."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"].strip(), error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


def spec_for(i: int) -> TargetSpec:
    """A deterministic, deliberately large spec (many pages per row) for crash tests."""
    return TargetSpec(
        name=f"Crash target {i}",
        description="d" * (i * 131 % 2000),
        aliases=tuple(f"alias {i}.{j}" for j in range(i % 7)),
        examples=tuple(f"example {i}.{j} " + "x" * (900 + j) for j in range(2 + i % 30)),
        redact=(f"secret-{i}@example.org",),
        intervention=Intervention.REFUSE if i % 3 == 0 else Intervention.AUTO,
    )


@contextmanager
def serve_process(env: dict[str, str]) -> Iterator[str]:
    """A real `lethe serve` process on a free loopback port, with `env` added to this one's;
    yields its base URL once /health answers, and stops it afterwards."""
    import httpx  # noqa: F811 (the module-level import is for type checking only)
    import pytest

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    lethe = Path(sys.executable).parent / "lethe"
    proc = subprocess.Popen(
        [str(lethe), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        cwd=REPO_ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, "server exited during start-up"
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("server did not start")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
