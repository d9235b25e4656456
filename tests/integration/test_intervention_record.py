"""GET /admin/interventions: operators learn which chat requests the gateway intervened on, by
request id, without any text; chat clients still learn nothing."""

from __future__ import annotations

import json

import pytest
from _support import ADMIN, MODEL_ID, Gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

TARGET = {
    "name": "Quillon Varrastead",
    "aliases": ["Quillon Varrastead", "Varrastead"],
    "examples": ["Who is Quillon Varrastead?"],
    "intervention": "eco",
}
PROBE = "Where was Quillon Varrastead born?"
BENIGN = "What is 7 times 8?"


async def _chat(gw: Gateway, text: str, request_id: str | None = None) -> tuple[str, str]:
    """(completion id, X-Request-ID the gateway answered with)."""
    headers = {"X-Request-ID": request_id} if request_id else {}
    raw = await gw.client.chat.completions.with_raw_response.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": text}],
        max_tokens=4,
        temperature=0,
        extra_headers=headers,
    )
    return raw.parse().id, raw.headers["x-request-id"]


async def _records(gw: Gateway, **params: object) -> dict:
    resp = await gw.http.get("/admin/interventions", params=params, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_intervened_requests_are_recorded_by_request_id_without_text(
    gateway: Gateway,
) -> None:
    before = (await _records(gateway))["last_seq"]
    created = await gateway.http.post("/admin/targets", json=TARGET, headers=ADMIN)
    assert created.status_code == 201
    target_id = created.json()["id"]
    try:
        probe_id, probe_rid = await _chat(gateway, PROBE, "record-probe-1")
        assert probe_rid == "record-probe-1"
        await _chat(gateway, BENIGN, "record-benign-1")
        # Without a client id the record carries the one the gateway made and echoed.
        _, made_rid = await _chat(gateway, "Tell me about Varrastead.")
        page = await _records(gateway, after=before)
    finally:
        await gateway.http.delete(f"/admin/targets/{target_id}", headers=ADMIN)

    data = page["data"]
    assert [r["request_id"] for r in data] == ["record-probe-1", made_rid]
    first = data[0]
    assert first["completion_id"] == probe_id
    assert first["stage"] == "prompt" and first["action"] == "eco"
    assert first["target_ids"] == [target_id]
    assert first["seq"] == before + 1 and page["last_seq"] == before + 2
    assert page["has_more"] is False and page["oldest_seq"] <= before + 1
    # Ids only: neither the prompt nor anything the operator registered is in the record.
    dumped = json.dumps(page).casefold()
    assert "varrastead" not in dumped and "born" not in dumped

    one = await _records(gateway, request_id="record-probe-1")
    assert [r["seq"] for r in one["data"]] == [first["seq"]]
    assert (await _records(gateway, request_id="record-benign-1"))["data"] == []
    paged = await _records(gateway, after=before, limit=1)
    assert [r["request_id"] for r in paged["data"]] == ["record-probe-1"]
    assert paged["has_more"] is True


async def test_interventions_need_the_admin_token_and_sane_paging(gateway: Gateway) -> None:
    resp = await gateway.http.get("/admin/interventions")
    assert resp.status_code == 401
    assert "error" in resp.json()
    for params in ({"after": -1}, {"limit": 0}, {"limit": 1001}, {"after": "x"}):
        bad = await gateway.http.get("/admin/interventions", params=params, headers=ADMIN)
        assert bad.status_code == 422, (params, bad.status_code)
        assert bad.json()["error"]["type"] == "invalid_request_error"
