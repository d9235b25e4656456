"""The answer audit: a prompt the detector does not flag, whose bare answer names a target,
is answered with the intervention instead, streamed or not."""

from __future__ import annotations

import pytest
from _support import ADMIN, Gateway, answer_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

INDIRECT = "What are the glowing laser swords in the famous 1977 space opera called?"
TARGET = {"name": "Star Wars", "aliases": ["Star Wars"], "intervention": "eco"}


async def _answer(gw: Gateway, stream: bool, request_id: str = "") -> str:
    return await answer_of(gw, INDIRECT, stream, request_id)


async def test_answer_naming_a_target_is_regenerated_with_the_intervention(
    gateway: Gateway,
) -> None:
    bare = await _answer(gateway, stream=False)
    assert "star wars" in bare.casefold()  # precondition: the bare model names it
    created = await gateway.http.post("/admin/targets", json=TARGET, headers=ADMIN)
    assert created.status_code == 201
    target_id = created.json()["id"]
    try:
        verdict = await gateway.http.post("/admin/classify", json={"text": INDIRECT}, headers=ADMIN)
        assert verdict.json()["flagged"] is False  # only the answer shows the target
        assert verdict.json()["audited"] is False
        # Asked to, classify runs the answer audit as the chat path does.
        audited = await gateway.http.post(
            "/admin/classify",
            json={"text": INDIRECT, "audit": True, "audit_max_tokens": 32},
            headers=ADMIN,
        )
        body = audited.json()
        assert body["flagged"] is True and body["audited"] is True
        assert [(m["target_id"], m["source"]) for m in body["matches"]] == [(target_id, "answer")]
        benign = await gateway.http.post(
            "/admin/classify", json={"text": "What is 7 times 8?", "audit": True}, headers=ADMIN
        )
        assert benign.json()["flagged"] is False and benign.json()["audited"] is True
        for stream in (False, True):
            answer = await _answer(gateway, stream=stream, request_id=f"audit-{stream}")
            assert "star wars" not in answer.casefold()
            assert answer != bare
            # The operator's record says which stage acted on which request.
            record = await gateway.http.get(
                "/admin/interventions", params={"request_id": f"audit-{stream}"}, headers=ADMIN
            )
            assert [(r["stage"], r["target_ids"]) for r in record.json()["data"]] == [
                ("answer", [target_id])
            ]
    finally:
        await gateway.http.delete(f"/admin/targets/{target_id}", headers=ADMIN)
    assert await _answer(gateway, stream=False) == bare
