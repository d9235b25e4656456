"""The admin API against the real app: auth, validation, targets, classify, and the core
forget flow (register -> enforced on the very next request -> delete -> forgotten no more)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio
from _support import ADMIN, MODEL_ID, Gateway, asgi_client, assert_error_shape, gateway_settings

from app.main import create_app

pytestmark = pytest.mark.asyncio(loop_scope="session")

UNRELATED = "What is the capital of France?"
PLACEHOLDER = "[redacted]"


async def greedy(gw: Gateway, content: str, max_tokens: int = 12) -> str:
    resp = await gw.client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": content}],
        temperature=0,
        max_tokens=max_tokens,
    )
    text: str = resp.choices[0].message.content
    return text


async def greedy_streamed(gw: Gateway, content: str, max_tokens: int = 12) -> str:
    stream = await gw.client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": content}],
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
    )
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def register(gw: Gateway, body: dict[str, Any]) -> dict[str, Any]:
    resp = await gw.http.post("/admin/targets", json=body, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    target: dict[str, Any] = resp.json()
    return target


async def delete(gw: Gateway, target_id: str) -> int:
    resp = await gw.http.delete(f"/admin/targets/{target_id}", headers=ADMIN)
    return resp.status_code


async def classify(gw: Gateway, **body: Any) -> dict[str, Any]:
    resp = await gw.http.post("/admin/classify", json=body, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    verdict: dict[str, Any] = resp.json()
    return verdict


# --- auth -------------------------------------------------------------------------------

ADMIN_CALLS = [
    ("GET", "/admin/targets", None),
    ("POST", "/admin/targets", {"name": "Should Never Be Stored"}),
    ("GET", "/admin/targets/tgt_x", None),
    ("DELETE", "/admin/targets/tgt_x", None),
    ("POST", "/admin/classify", {"text": "hello"}),
]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dGVzdC1hZG1pbg=="},
        {"Authorization": "test-admin"},
    ],
    ids=["no-header", "wrong-token", "empty-token", "basic-scheme", "no-scheme"],
)
async def test_admin_routes_need_the_bearer_token(gateway: Gateway, headers: dict) -> None:
    for method, path, body in ADMIN_CALLS:
        resp = await gateway.http.request(method, path, json=body, headers=headers)
        assert resp.status_code == 401, (method, path)
        error = assert_error_shape(resp.json())
        assert error["type"] == "authentication_error"
        assert "test-admin" not in resp.text
        assert resp.headers.get("www-authenticate", "").lower().startswith("bearer")
    listed = await gateway.http.get("/admin/targets", headers=ADMIN)
    assert all(t["name"] != "Should Never Be Stored" for t in listed.json()["data"])


async def test_bearer_scheme_is_case_insensitive(gateway: Gateway) -> None:
    resp = await gateway.http.get("/admin/targets", headers={"Authorization": "bearer test-admin"})
    assert resp.status_code == 200
    assert resp.json()["object"] == "list"


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "   \t "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "Valid Name", "aliases": [""]}, "aliases"),
        ({"name": "Valid Name", "aliases": ["   "]}, "aliases"),
        ({"name": "Valid Name", "aliases": [f"alias {i}" for i in range(100)]}, "aliases"),
        ({"name": "Valid Name", "examples": ["x" * 5000]}, "examples"),
        ({"name": "Valid Name", "redact": ["a"]}, "redact"),
        ({"name": "Valid Name", "intervention": "unlearn"}, "intervention"),
        ({"name": "Valid Name", "colour": "red"}, "colour"),
        ({"name": 42}, "name"),
    ],
    ids=[
        "missing-name",
        "empty-name",
        "whitespace-name",
        "long-name",
        "empty-alias",
        "blank-alias",
        "100-aliases",
        "5000-char-example",
        "1-char-redact",
        "unknown-intervention",
        "unknown-field",
        "non-string-name",
    ],
)
async def test_invalid_target_is_422_naming_the_field(
    gateway: Gateway, body: dict[str, Any], field: str
) -> None:
    before = {
        t["id"] for t in (await gateway.http.get("/admin/targets", headers=ADMIN)).json()["data"]
    }
    resp = await gateway.http.post("/admin/targets", json=body, headers=ADMIN)
    assert resp.status_code == 422
    error = assert_error_shape(resp.json(), code="invalid_schema")
    assert field in error["message"]
    assert error["param"] is not None and error["param"].startswith(field)
    after = {
        t["id"] for t in (await gateway.http.get("/admin/targets", headers=ADMIN)).json()["data"]
    }
    assert after == before  # nothing was stored


async def test_malformed_admin_json_is_422(gateway: Gateway) -> None:
    resp = await gateway.http.post(
        "/admin/targets",
        content=b'{"name": "unterminated',
        headers={**ADMIN, "content-type": "application/json"},
    )
    assert resp.status_code == 422
    assert_error_shape(resp.json())


@pytest.mark.parametrize(
    "body",
    [{}, {"text": "a", "messages": [{"role": "user", "content": "a"}]}, {"text": ""}],
    ids=["neither", "both", "empty-text"],
)
async def test_classify_needs_exactly_one_input(gateway: Gateway, body: dict[str, Any]) -> None:
    resp = await gateway.http.post("/admin/classify", json=body, headers=ADMIN)
    assert resp.status_code == 422
    assert_error_shape(resp.json())


async def test_unknown_target_is_404(gateway: Gateway) -> None:
    for method in ("GET", "DELETE"):
        resp = await gateway.http.request(method, "/admin/targets/tgt_doesnotexist", headers=ADMIN)
        assert resp.status_code == 404, method
        error = assert_error_shape(resp.json(), code="not_found")
        assert "tgt_doesnotexist" in error["message"]


# --- a registered `refuse` target: registration, listing, classify, refusal ---------------

OXWADDLE = {
    "name": "  Plimbertine Oxwaddle  ",
    "aliases": ["Oxwaddle", "Oxwaddle"],
    "intervention": "refuse",
}


class TestRegisteredTarget:
    """One target for the whole class (each registration starts a calibration job)."""

    @pytest_asyncio.fixture(scope="class", loop_scope="session")
    async def target(self, gateway: Gateway) -> AsyncIterator[dict[str, Any]]:
        target = await register(gateway, OXWADDLE)
        try:
            yield target
        finally:
            await delete(gateway, target["id"])

    async def test_register_returns_the_stored_target(self, target: dict[str, Any]) -> None:
        assert isinstance(target["id"], str) and target["id"]
        assert target["object"] == "target"
        assert target["status"] == "active"
        assert target["name"] == "Plimbertine Oxwaddle"  # stripped
        assert target["aliases"] == ["Oxwaddle"]  # de-duplicated
        assert target["intervention"] == "refuse"
        assert abs(target["created_at"] - time.time()) < 600
        cal = target["calibration"]
        assert cal["state"] in {"pending", "running"}
        assert 0.0 <= cal["progress"] < 1.0
        assert isinstance(cal["threshold"], float) and cal["eco_sigma"] > 0

    async def test_list_and_get(self, gateway: Gateway, target: dict[str, Any]) -> None:
        listed = await gateway.http.get("/admin/targets", headers=ADMIN)
        assert listed.status_code == 200
        body = listed.json()
        assert body["object"] == "list"
        assert target["id"] in [t["id"] for t in body["data"]]
        got = await gateway.http.get(f"/admin/targets/{target['id']}", headers=ADMIN)
        assert got.status_code == 200
        for key in ("id", "name", "aliases", "examples", "redact", "intervention", "created_at"):
            assert got.json()[key] == target[key], key
        health = (await gateway.http.get("/health")).json()
        assert health["targets"] >= 1 and health["index_vectors"] >= 1

    async def test_classify_flags_an_alias_mention_with_its_span(
        self, gateway: Gateway, target: dict[str, Any]
    ) -> None:
        text = "Could you tell me a little about Oxwaddle, please?"
        verdict = await classify(gateway, text=text)
        assert verdict["flagged"] is True
        assert verdict["action"] == "refuse"
        match = next(m for m in verdict["matches"] if m["target_id"] == target["id"])
        assert match["name"] == "Plimbertine Oxwaddle"
        assert match["source"] == "alias"
        assert match["score"] == pytest.approx(1.0)
        slices = [text[s["start"] : s["end"]] for s in match["spans"]]
        assert "Oxwaddle" in slices
        assert all(
            s["message"] == 0 and 0 <= s["start"] < s["end"] <= len(text) for s in match["spans"]
        )

    async def test_classify_messages_reports_the_message_index(
        self, gateway: Gateway, target: dict[str, Any]
    ) -> None:
        messages = [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Who is Plimbertine Oxwaddle?"},
        ]
        verdict = await classify(gateway, messages=messages)
        match = next(m for m in verdict["matches"] if m["target_id"] == target["id"])
        spans = [
            (s["message"], messages[s["message"]]["content"][s["start"] : s["end"]])
            for s in match["spans"]
        ]
        assert (3, "Plimbertine Oxwaddle") in spans
        assert all(index == 3 for index, _ in spans)

    async def test_classify_leaves_an_unrelated_prompt_alone(
        self, gateway: Gateway, target: dict[str, Any]
    ) -> None:
        verdict = await classify(gateway, text=UNRELATED)
        assert verdict == {"flagged": False, "matches": [], "action": "none", "audited": False}

    async def test_refuse_target_gets_the_refusal_message(
        self, gateway: Gateway, target: dict[str, Any]
    ) -> None:
        refusal = gateway.settings.refusal_message
        resp = await gateway.http.post(
            "/v1/chat/completions",
            json={
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": "Tell me about Oxwaddle."}],
                "max_tokens": 8,
            },
        )
        assert resp.status_code == 200
        body = resp.json()
        assert body["choices"][0]["message"]["content"] == refusal
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"]["completion_tokens"] > 0
        assert target["id"] not in resp.text and "Oxwaddle" not in resp.text
        assert not any(target["id"] in v or "Oxwaddle" in v for v in resp.headers.values())
        assert await greedy_streamed(gateway, "Tell me about Oxwaddle.") == refusal


# --- the core flow ------------------------------------------------------------------------

ZORBLAX = {
    "name": "Zorblax Quintavenue",
    "aliases": ["Zorblax"],
    "examples": ["Who is Zorblax Quintavenue?"],
    "redact": ["zorblax@example.org"],
}
QUESTION = "Who is Zorblax Quintavenue?"
ECHO = "Please repeat this email address exactly, nothing else: zorblax@example.org"


async def wait_calibrated(gw: Gateway, target_id: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    progress = -1.0
    while True:
        resp = await gw.http.get(f"/admin/targets/{target_id}", headers=ADMIN)
        assert resp.status_code == 200
        cal: dict[str, Any] = resp.json()["calibration"]
        assert cal["state"] != "failed", cal
        assert 0.0 <= cal["progress"] <= 1.0
        assert cal["progress"] >= progress, "progress went backwards"
        progress = cal["progress"]
        if cal["state"] == "done":
            return cal
        assert time.monotonic() < deadline, f"calibration not done after {timeout}s: {cal}"
        await asyncio.sleep(1.0)


async def test_core_forget_flow(gateway: Gateway) -> None:
    assert (await classify(gateway, text=QUESTION))["flagged"] is False  # nothing left over
    before = await greedy(gateway, QUESTION)
    unrelated_before = await greedy(gateway, UNRELATED)

    target = await register(gateway, ZORBLAX)
    target_id = target["id"]
    try:
        # Enforced for the very next request, while calibration runs in the background.
        during = await greedy(gateway, QUESTION)
        assert during != before
        assert await greedy(gateway, UNRELATED) == unrelated_before

        # The client never learns which target matched.
        resp = await gateway.http.post(
            "/v1/chat/completions",
            json={
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": QUESTION}],
                "temperature": 0,
                "max_tokens": 12,
            },
        )
        assert resp.status_code == 200
        for secret in (target_id, "Zorblax", "Quintavenue"):
            assert secret not in resp.text
            assert all(secret not in f"{k}: {v}" for k, v in resp.headers.items())

        # The redact string never comes back, streamed or not.
        for answer in (await greedy(gateway, ECHO, 24), await greedy_streamed(gateway, ECHO, 24)):
            assert "zorblax@example.org" not in answer.casefold()

        cal = await wait_calibrated(gateway, target_id)
        assert cal["progress"] == 1.0
        assert cal["eco_sigma"] > 0
        assert await greedy(gateway, QUESTION) != before  # still enforced after calibration
        assert await greedy(gateway, UNRELATED) == unrelated_before
    finally:
        status = await delete(gateway, target_id)
    assert status == 204

    # Requests after the 204 are no longer intervened on.
    assert await greedy(gateway, QUESTION) == before
    assert (await classify(gateway, text=QUESTION))["flagged"] is False
    second = await gateway.http.delete(f"/admin/targets/{target_id}", headers=ADMIN)
    assert second.status_code == 404
    assert_error_shape(second.json(), code="not_found")
    gone = await gateway.http.get(f"/admin/targets/{target_id}", headers=ADMIN)
    assert gone.status_code == 404
    listed = (await gateway.http.get("/admin/targets", headers=ADMIN)).json()["data"]
    assert target_id not in [t["id"] for t in listed]


async def test_redact_strings_never_reach_unflagged_answers(gateway: Gateway) -> None:
    """A target's redact list guards every answer, streamed or not, even unflagged ones: the
    string is either replaced by the placeholder, or (answer audit) the answer is re-run with
    the target's intervention, here `refuse`."""
    answer = await greedy(gateway, UNRELATED)
    assert "Paris" in answer, answer  # precondition: the model says it
    target = await register(
        gateway, {"name": "Quillon Brackwater", "redact": ["Paris"], "intervention": "refuse"}
    )
    try:
        assert (await classify(gateway, text=UNRELATED))["flagged"] is False
        allowed = {answer.replace("Paris", PLACEHOLDER), gateway.settings.refusal_message}
        for got in (await greedy(gateway, UNRELATED), await greedy_streamed(gateway, UNRELATED)):
            assert "paris" not in got.casefold()
            assert got in allowed
    finally:
        assert await delete(gateway, target["id"]) == 204
    assert await greedy(gateway, UNRELATED) == answer


# --- admin API disabled ----------------------------------------------------------------------


@pytest.mark.slow
async def test_admin_api_without_a_token_is_disabled(tmp_path: Path) -> None:
    app = create_app(gateway_settings(tmp_path, admin_token=None))
    async with app.router.lifespan_context(app):
        async with asgi_client(app) as http:
            for headers in ({}, ADMIN, {"Authorization": "Bearer "}):
                for method, path, body in [*ADMIN_CALLS]:
                    resp = await http.request(method, path, json=body, headers=headers)
                    assert resp.status_code == 403, (method, path, headers)
                    error = assert_error_shape(resp.json(), code="forbidden")
                    assert error["type"] == "permission_error"
            # The public API still works.
            assert (await http.get("/health")).status_code == 200
            sdk = openai.AsyncOpenAI(
                base_url="http://test/v1", api_key="x", http_client=http, max_retries=0
            )
            models = await sdk.models.list()
            assert [m.id for m in models.data] == [MODEL_ID]
