"""Operations against the real gateway: /metrics after real requests, request ids in the JSON
logs, the admin audit trail (and no target text in any log line), body limit, CORS default,
and API keys + rate limits through the official SDK."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from _support import ADMIN, ADMIN_TOKEN, MODEL_ID, Gateway, asgi_client, gateway_settings
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app

pytestmark = pytest.mark.asyncio(loop_scope="session")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(gw: Gateway) -> Samples:
    resp = await gw.http.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def json_lines(err: str) -> list[dict[str, Any]]:
    """The JSON log lines in captured stderr (every line the gateway logs is one)."""
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


CHAT = "/v1/chat/completions"


async def test_metrics_count_a_chat_request_and_its_tokens(gateway: Gateway) -> None:
    before = await scrape(gateway)
    resp = await gateway.client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Name a colour."}],
        temperature=0,
        max_tokens=6,
    )
    after = await scrape(gateway)
    assert resp.usage is not None and resp.usage.completion_tokens > 0
    tokens = delta(before, after, "lethe_completion_tokens_total")
    assert tokens == resp.usage.completion_tokens
    assert delta(before, after, "lethe_chat_requests_total", action="none") == 1
    http = {"method": "POST", "route": CHAT, "status": "200"}
    assert delta(before, after, "lethe_http_requests_total", **http) == 1
    latency = {"method": "POST", "route": CHAT}
    assert delta(before, after, "lethe_http_request_duration_seconds_count", **latency) == 1
    assert delta(before, after, "lethe_detector_inspect_duration_seconds_count") == 1
    assert after[("lethe_registry_targets", ())] == len(gateway.services.registry)
    assert after[("lethe_engine_batch_size", ())] >= 0
    assert after[("lethe_engine_queue_depth", ())] >= 0


async def test_metrics_count_streamed_tokens(gateway: Gateway) -> None:
    before = await scrape(gateway)
    stream = await gateway.client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Count to three."}],
        temperature=0,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage async for chunk in stream if chunk.usage is not None]
    after = await scrape(gateway)
    assert len(usage) == 1
    assert delta(before, after, "lethe_completion_tokens_total") == usage[0].completion_tokens


async def test_request_id_reaches_the_response_and_the_chat_log_line(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    resp = await gateway.http.post(
        CHAT,
        json={
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 3,
        },
        headers={"X-Request-ID": "ops-test-1"},
    )
    assert resp.status_code == 200
    assert resp.headers["x-request-id"] == "ops-test-1"
    lines = json_lines(capsys.readouterr().err)
    chat_lines = [e for e in lines if e["logger"] == "app.chat"]
    assert chat_lines, lines
    assert all(e["request_id"] == "ops-test-1" for e in chat_lines)
    assert {"time", "level", "logger", "message", "request_id"} <= set(chat_lines[0])


async def test_admin_actions_are_audited_without_target_text(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_texts = {
        "name": "Quillon Vexhaven",
        "alias": "the Vexhaven archive",
        "example": "Where did Quillon Vexhaven hide the ledger?",
        "description": "A fictional smuggler invented for the audit test",
    }
    capsys.readouterr()
    created = await gateway.http.post(
        "/admin/targets",
        json={
            "name": secret_texts["name"],
            "aliases": [secret_texts["alias"]],
            "examples": [secret_texts["example"]],
            "description": secret_texts["description"],
            "intervention": "refuse",
        },
        headers={**ADMIN, "X-Request-ID": "audit-create"},
    )
    assert created.status_code == 201, created.text
    target_id = created.json()["id"]
    try:
        classified = await gateway.http.post(
            "/admin/classify", json={"text": secret_texts["example"]}, headers=ADMIN
        )
        assert classified.json()["flagged"] is True
        chat = await gateway.http.post(
            CHAT,
            json={
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": secret_texts["example"]}],
                "max_tokens": 4,
            },
        )
        assert chat.status_code == 200
        refused = await gateway.http.delete(
            f"/admin/targets/{target_id}", headers={"Authorization": "Bearer wrong"}
        )
        assert refused.status_code == 401
    finally:
        deleted = await gateway.http.delete(
            f"/admin/targets/{target_id}", headers={**ADMIN, "X-Request-ID": "audit-delete"}
        )
    assert deleted.status_code == 204
    lines = json_lines(capsys.readouterr().err)

    audit = [e for e in lines if e["logger"] == "lethe.audit"]
    assert [e["action"] for e in audit] == [
        "target.create",
        "classify",
        "target.delete",
        "target.delete",
    ]
    create, classify, wrong, delete = audit
    fingerprint = hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()[:8]
    for entry in (create, classify, wrong, delete):
        assert {"time", "level", "caller", "client_ip", "action", "target_id", "status"} <= set(
            entry
        )
        assert entry["level"] == "INFO" and entry["client_ip"] == "127.0.0.1"
    assert create["target_id"] == target_id and create["status"] == 201
    assert create["caller"] == fingerprint
    assert create["request_id"] == "audit-create"
    assert (classify["target_id"], classify["status"]) == (None, 200)
    assert (wrong["target_id"], wrong["status"]) == (target_id, 401)
    assert wrong["caller"] == hashlib.sha256(b"wrong").hexdigest()[:8] != fingerprint
    assert delete["target_id"] == target_id and delete["status"] == 204
    assert delete["caller"] == fingerprint
    assert delete["request_id"] == "audit-delete"

    info_lines = [e for e in lines if e["level"] in ("INFO", "WARNING", "ERROR", "CRITICAL")]
    assert len(info_lines) > len(audit)  # the registry and chat lines are in there too
    for entry in info_lines:
        text = json.dumps(entry, ensure_ascii=False).lower()
        for kind, secret in secret_texts.items():
            assert secret.lower() not in text, (kind, entry)
        assert "vexhaven" not in text and ADMIN_TOKEN not in text, entry


async def test_oversized_chat_bodies_are_413(gateway: Gateway) -> None:
    limit = gateway.settings.max_body_bytes

    async def chunked() -> AsyncIterator[bytes]:
        yield b'{"model": "' + MODEL_ID.encode() + b'", "messages": [{"role": "user", "content": "'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536
        yield b'"}]}'

    streamed = await gateway.http.post(
        CHAT, content=chunked(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in streamed.request.headers
    declared = await gateway.http.post(
        CHAT, content=b"y" * (limit + 1), headers={"Content-Type": "application/json"}
    )
    for resp in (streamed, declared):
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "request_too_large"
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


async def test_cors_is_off_by_default(gateway: Gateway) -> None:
    resp = await gateway.http.options(
        CHAT,
        headers={"Origin": "https://site.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in resp.headers


async def test_api_keys_and_rate_limit_through_the_sdk(tmp_path: Path) -> None:
    settings = gateway_settings(
        tmp_path,
        api_keys="key-a,key-b",
        rate_limit_rpm=1,
        rate_limit_burst=2,
        cors_origins='["https://ui.example"]',
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app), asgi_client(app) as http:

        def sdk(key: str) -> openai.AsyncOpenAI:
            return openai.AsyncOpenAI(
                base_url="http://test/v1", api_key=key, http_client=http, max_retries=0
            )

        with pytest.raises(openai.AuthenticationError) as denied:
            await sdk("key-c").models.list()
        assert denied.value.code == "invalid_api_key"
        assert (await http.get("/v1/models")).status_code == 401
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/metrics")).status_code == 200

        good = sdk("key-a")
        assert [m.id async for m in good.models.list()] == [MODEL_ID]
        chat = await good.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert chat.choices[0].message.content is not None
        with pytest.raises(openai.RateLimitError) as limited:
            await good.models.list()
        assert limited.value.code == "rate_limit_exceeded"
        assert int(limited.value.response.headers["retry-after"]) >= 1
        assert [m.id async for m in sdk("key-b").models.list()] == [MODEL_ID]

        preflight = await http.options(
            CHAT,
            headers={"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.headers["access-control-allow-origin"] == "https://ui.example"
