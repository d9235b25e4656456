"""An answer to an intervened request never says the matched target's names that the user did
not write: where the intervention does not hold a sampled answer back, the name is redacted."""

from __future__ import annotations

import pytest
from _support import ADMIN, MODEL_ID, Gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

TARGET = {
    "name": "Harry Potter",
    "aliases": ["Harry Potter", "Hogwarts", "Voldemort", "Albus Dumbledore"],
    "examples": ["Who is Harry Potter?", "What is Hogwarts?"],
    "intervention": "eco",
}
# The user names the books, then asks about the school without naming it.
MESSAGES = [
    {"role": "user", "content": "I love the Harry Potter books."},
    {"role": "assistant", "content": "Great! What would you like to know?"},
    {"role": "user", "content": "Who is the headmaster of the school?"},
]
WITHHELD = ("hogwarts", "voldemort", "dumbledore")


async def _answers(gw: Gateway, stream: bool) -> list[str]:
    kwargs = {
        "model": MODEL_ID,
        "messages": MESSAGES,
        "temperature": 1.0,
        "seed": 1,
        "n": 8,
        "max_tokens": 48,
    }
    if not stream:
        resp = await gw.client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
        return [str(c.message.content) for c in resp.choices]
    texts = [""] * 8
    chunks = await gw.client.chat.completions.create(stream=True, **kwargs)  # type: ignore[call-overload]
    async for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    return texts


async def test_sampled_answers_to_an_intervened_request_never_say_withheld_names(
    gateway: Gateway,
) -> None:
    created = await gateway.http.post("/admin/targets", json=TARGET, headers=ADMIN)
    assert created.status_code == 201
    target_id = created.json()["id"]
    try:
        verdict = await gateway.http.post(
            "/admin/classify", json={"messages": MESSAGES}, headers=ADMIN
        )
        assert verdict.json()["flagged"] is True
        for stream in (False, True):
            answers = await _answers(gateway, stream)
            assert len(answers) == 8 and all(answers)
            for answer in answers:
                folded = answer.casefold()
                assert not any(name in folded for name in WITHHELD), answer
            # With this seed the bundled model names the school in some samples despite ECO:
            # the redaction, not luck, kept it out.
            placeholder = gateway.settings.redaction_placeholder
            assert any(placeholder in answer for answer in answers), answers
    finally:
        await gateway.http.delete(f"/admin/targets/{target_id}", headers=ADMIN)
