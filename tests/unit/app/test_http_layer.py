"""The HTTP layers of create_app (request ids, metrics, audit, CORS, body limit, API keys, rate
limits, /metrics) on a tiny app wired exactly like the gateway, with stand-in routes."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from prometheus_client.parser import text_string_to_metric_families

from app.errors import install_error_handlers
from app.limits import ClientGuard, require_client
from app.logging_setup import configure_logging
from app.metrics import GatewayMetrics
from app.middleware import install_middleware
from app.routes import metrics as metrics_route
from app.settings import Settings

log = logging.getLogger("tests.http_layer")


def make_app(**overrides: Any) -> FastAPI:
    """What create_app builds around its routes, with stand-in /v1 and /admin routes."""
    settings = Settings(**overrides)
    gateway_metrics = GatewayMetrics()
    app = FastAPI()
    app.state.settings = settings
    app.state.metrics = gateway_metrics
    app.state.client_guard = ClientGuard.from_settings(settings)
    install_error_handlers(app)
    install_middleware(app, settings, gateway_metrics)
    v1 = APIRouter(prefix="/v1")

    @v1.post("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        body = await request.body()
        log.info("echo handled %d bytes", len(body))
        return {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}

    @v1.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    @v1.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaboom")

    admin = APIRouter(prefix="/admin")

    @admin.delete("/targets/{target_id}", status_code=204)
    async def delete_target(target_id: str) -> None:
        return None

    app.include_router(metrics_route.router)
    app.include_router(v1, dependencies=[Depends(require_client)])
    app.include_router(admin)
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
        base_url="http://test",
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Exposition text as {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def assert_openai_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


# --- request ids and logs --------------------------------------------------------------------


async def test_request_id_is_echoed_generated_or_replaced(capsys: pytest.CaptureFixture[str]):
    app = make_app()
    async with client(app) as http:
        given = await http.post("/v1/echo", content=b"x", headers={"X-Request-ID": "abc-123.4"})
        fresh = await http.post("/v1/echo", content=b"x")
        forged = await http.post("/v1/echo", content=b"x", headers={"X-Request-ID": "a b\tc"})
        too_long = await http.post("/v1/echo", content=b"x", headers={"X-Request-ID": "a" * 129})
    assert given.headers["x-request-id"] == "abc-123.4"
    for resp in (fresh, forged, too_long):
        rid = resp.headers["x-request-id"]
        assert len(rid) == 32 and int(rid, 16) >= 0
    assert len({fresh.headers["x-request-id"], forged.headers["x-request-id"]}) == 2


async def test_log_lines_are_json_with_the_request_id(capsys: pytest.CaptureFixture[str]):
    app = make_app(log_format="json")
    configure_logging("json", "INFO")
    capsys.readouterr()
    async with client(app) as http:
        resp = await http.post("/v1/echo", content=b"hello", headers={"X-Request-ID": "rid-42"})
    log.info("outside any request")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    handled = [e for e in lines if e["message"] == "echo handled 5 bytes"]
    assert len(handled) == 1, lines
    entry = handled[0]
    assert entry["request_id"] == "rid-42" == resp.headers["x-request-id"]
    assert entry["level"] == "INFO" and entry["logger"] == "tests.http_layer"
    assert entry["time"].endswith("+00:00")
    outside = [e for e in lines if e["message"] == "outside any request"]
    assert outside and outside[0]["request_id"] is None


async def test_text_format_is_one_readable_line(capsys: pytest.CaptureFixture[str]):
    app = make_app(log_format="text")
    configure_logging("text", "INFO")
    capsys.readouterr()
    async with client(app) as http:
        await http.post("/v1/echo", content=b"abc", headers={"X-Request-ID": "rid-7"})
    err = capsys.readouterr().err
    configure_logging("json", "INFO")
    line = next(x for x in err.splitlines() if "echo handled" in x)
    assert " INFO tests.http_layer [rid-7]: echo handled 3 bytes" in line


async def test_unhandled_error_is_500_with_request_id_and_a_logged_trace(
    capsys: pytest.CaptureFixture[str],
):
    app = make_app()
    configure_logging("json", "INFO")
    capsys.readouterr()
    async with client(app) as http:
        resp = await http.get("/v1/boom", headers={"X-Request-ID": "rid-boom"})
    assert_openai_error(resp, 500, "internal_error")
    assert "kaboom" not in resp.text
    assert resp.headers["x-request-id"] == "rid-boom"
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    errors = [e for e in lines if e["message"] == "unhandled error"]
    assert errors and errors[0]["request_id"] == "rid-boom" and "kaboom" in errors[0]["exc"]


# --- metrics ---------------------------------------------------------------------------------


async def test_http_metrics_use_route_templates_and_statuses() -> None:
    app = make_app()
    async with client(app) as http:
        for i in range(3):
            assert (await http.get(f"/v1/items/item-{i}")).status_code == 200
        assert (await http.get("/no/such/path/1")).status_code == 404
        assert (await http.get("/no/such/path/2")).status_code == 404
        assert (await http.get("/v1/boom")).status_code == 500
        text = (await http.get("/metrics")).text
    s = samples(text)
    route = (("method", "GET"), ("route", "/v1/items/{item_id}"), ("status", "200"))
    assert s[("lethe_http_requests_total", route)] == 3
    unmatched = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert s[("lethe_http_requests_total", unmatched)] == 2
    boom = (("method", "GET"), ("route", "/v1/boom"), ("status", "500"))
    assert s[("lethe_http_requests_total", boom)] == 1
    latency = (("method", "GET"), ("route", "/v1/items/{item_id}"))
    assert s[("lethe_http_request_duration_seconds_count", latency)] == 3
    assert "item-0" not in text and "/no/such" not in text
    for name in (
        "lethe_completion_tokens_total",
        "lethe_engine_batch_size",
        "lethe_engine_queue_depth",
        "lethe_registry_targets",
        "lethe_registry_version",
        "lethe_registry_propagation_lag_seconds",
        "lethe_detector_inspect_duration_seconds_count",
    ):
        assert (name, ()) in s, name
    assert "# TYPE lethe_adapter_jobs gauge" in text
    assert "# TYPE lethe_chat_requests_total counter" in text


async def test_two_apps_in_one_process_keep_separate_metrics() -> None:
    first, second = make_app(), make_app()
    async with client(first) as a, client(second) as b:
        await a.get("/v1/items/1")
        text = (await b.get("/metrics")).text
    assert "/v1/items/{item_id}" not in text


async def test_gauges_are_read_at_scrape_time() -> None:
    app = make_app()
    state = {"batch": 3, "queue": 5, "targets": 2}
    app.state.metrics.watch(
        batch_size=lambda: state["batch"],
        queue_depth=lambda: state["queue"],
        registry_targets=lambda: state["targets"],
    )
    async with client(app) as http:
        before = samples((await http.get("/metrics")).text)
        state.update(batch=0, queue=1, targets=7)
        after = samples((await http.get("/metrics")).text)
    assert before[("lethe_engine_batch_size", ())] == 3
    assert before[("lethe_engine_queue_depth", ())] == 5
    assert after[("lethe_engine_batch_size", ())] == 0
    assert after[("lethe_engine_queue_depth", ())] == 1
    assert after[("lethe_registry_targets", ())] == 7


async def test_metrics_token_guards_metrics_only_when_set() -> None:
    async with client(make_app()) as http:
        assert (await http.get("/metrics")).status_code == 200
    async with client(make_app(metrics_token="m-secret")) as http:
        assert_openai_error(await http.get("/metrics"), 401, "invalid_api_key")
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert_openai_error(wrong, 401, "invalid_api_key")
        ok = await http.get("/metrics", headers={"Authorization": "Bearer m-secret"})
        assert ok.status_code == 200 and "lethe_http_requests_total" in ok.text


# --- API keys and rate limits ----------------------------------------------------------------


async def test_without_api_keys_v1_is_open() -> None:
    async with client(make_app()) as http:
        assert (await http.get("/v1/items/1")).status_code == 200


async def test_api_keys_gate_v1_but_not_metrics() -> None:
    app = make_app(api_keys="k-one, k-two")
    async with client(app) as http:
        missing = await http.get("/v1/items/1")
        error = assert_openai_error(missing, 401, "invalid_api_key")
        assert error["type"] == "authentication_error"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = await http.get("/v1/items/1", headers={"Authorization": "Bearer k-three"})
        assert_openai_error(wrong, 401, "invalid_api_key")
        basic = await http.get("/v1/items/1", headers={"Authorization": "Basic k-one"})
        assert_openai_error(basic, 401, "invalid_api_key")
        for key in ("k-one", "k-two"):
            ok = await http.get("/v1/items/1", headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        assert (await http.get("/metrics")).status_code == 200
    assert "k-one" not in missing.text + wrong.text


async def test_rate_limit_answers_429_with_retry_after_per_key() -> None:
    app = make_app(api_keys='["k-one", "k-two"]', rate_limit_rpm=6, rate_limit_burst=2)
    one = {"Authorization": "Bearer k-one"}
    two = {"Authorization": "Bearer k-two"}
    async with client(app) as http:
        assert [(await http.get("/v1/items/1", headers=one)).status_code for _ in range(2)] == [
            200,
            200,
        ]
        limited = await http.get("/v1/items/1", headers=one)
        error = assert_openai_error(limited, 429, "rate_limit_exceeded")
        assert error["type"] == "rate_limit_error"
        # 6 per minute = one token every 10 s.
        assert 1 <= int(limited.headers["retry-after"]) <= 10
        assert (await http.get("/v1/items/1", headers=two)).status_code == 200
        assert (await http.get("/metrics")).status_code == 200  # never rate limited


async def test_rate_limit_is_per_client_address_without_keys() -> None:
    app = make_app(rate_limit_rpm=60, rate_limit_burst=1)
    near = httpx.ASGITransport(app=app, client=("10.0.0.1", 1234))
    far = httpx.ASGITransport(app=app, client=("10.0.0.2", 1234))
    async with (
        httpx.AsyncClient(transport=near, base_url="http://test") as a,
        httpx.AsyncClient(transport=far, base_url="http://test") as b,
    ):
        assert (await a.get("/v1/items/1")).status_code == 200
        assert (await a.get("/v1/items/1")).status_code == 429
        assert (await b.get("/v1/items/1")).status_code == 200


# --- body size limit -------------------------------------------------------------------------


async def _chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield b"a" * n
        sent += n


async def test_body_limit_with_content_length() -> None:
    app = make_app(max_body_bytes=1000)
    async with client(app) as http:
        at_limit = await http.post("/v1/echo", content=b"b" * 1000)
        over = await http.post("/v1/echo", content=b"b" * 1001)
    assert at_limit.status_code == 200 and at_limit.json()["bytes"] == 1000
    error = assert_openai_error(over, 413, "request_too_large")
    assert error["type"] == "invalid_request_error" and "1000" in error["message"]
    assert over.headers["x-request-id"]


async def test_body_limit_without_content_length() -> None:
    app = make_app(max_body_bytes=200_000)
    async with client(app) as http:
        over = await http.post("/v1/echo", content=_chunks(300_000))
        under = await http.post("/v1/echo", content=_chunks(150_000, size=1000))
        text = (await http.get("/metrics")).text
    assert "content-length" not in over.request.headers
    assert over.request.headers["transfer-encoding"] == "chunked"
    assert_openai_error(over, 413, "request_too_large")
    assert under.status_code == 200
    assert under.json() == {
        "bytes": 150_000,
        "sha256": hashlib.sha256(b"a" * 150_000).hexdigest(),
    }
    key = ("lethe_http_requests_total", (("method", "POST"), ("route", "unmatched")))
    assert samples(text)[(key[0], (*key[1], ("status", "413")))] == 1


async def test_default_body_limit_is_one_mebibyte() -> None:
    assert Settings().max_body_bytes == 1024 * 1024
    async with client(make_app()) as http:
        assert (await http.post("/v1/echo", content=b"c" * (1024 * 1024))).status_code == 200
        over = await http.post("/v1/echo", content=_chunks(1024 * 1024 + 1))
    assert_openai_error(over, 413, "request_too_large")


# --- CORS ------------------------------------------------------------------------------------

PREFLIGHT = {
    "Origin": "https://app.example.com",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


async def test_cors_is_off_by_default() -> None:
    async with client(make_app()) as http:
        pre = await http.options("/v1/echo", headers=PREFLIGHT)
        simple = await http.get("/v1/items/1", headers={"Origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in pre.headers
    assert "access-control-allow-origin" not in simple.headers


async def test_cors_allows_only_the_configured_origins() -> None:
    app = make_app(cors_origins="https://app.example.com")
    async with client(app) as http:
        pre = await http.options("/v1/echo", headers=PREFLIGHT)
        other = await http.options(
            "/v1/echo", headers={**PREFLIGHT, "Origin": "https://evil.example"}
        )
        simple = await http.get("/v1/items/1", headers={"Origin": "https://app.example.com"})
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers
    assert simple.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()


# --- audit (routing side; the real admin API is covered by the integration tests) ------------


async def test_audit_record_for_an_admin_route_has_no_body_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app()
    caplog.set_level(logging.INFO, logger="lethe.audit")
    async with client(app) as http:
        await http.delete(
            "/admin/targets/tgt_abc", headers={"Authorization": "Bearer admin-secret"}
        )
        await http.delete("/admin/targets/bad%0Aid")
    records = [r for r in caplog.records if r.name == "lethe.audit"]
    assert len(records) == 2
    first, second = (r.__dict__ for r in records)
    assert first["action"] == "target.delete" and first["target_id"] == "tgt_abc"
    assert first["status"] == 204 and first["client_ip"] == "127.0.0.1"
    assert first["caller"] == hashlib.sha256(b"admin-secret").hexdigest()[:8]
    assert second["caller"] == "anonymous" and second["target_id"] == "<invalid>"
    assert all("admin-secret" not in r.getMessage() for r in records)
