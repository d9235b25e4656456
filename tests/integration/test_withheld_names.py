"""An answer to an intervened request never says the matched target's names that the user did
not write: where the intervention does not hold the model back, the name is redacted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from _support import ADMIN, Gateway, answer_of, gateway_settings, running_gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

TARGET = {
    "name": "Harry Potter",
    "aliases": ["Harry Potter", "Hogwarts", "Voldemort", "Albus Dumbledore"],
    "examples": ["Who is Harry Potter?", "What is Hogwarts?"],
    "intervention": "eco",
}
QUESTION = "What is the name of Harry Potter's school of witchcraft?"


@pytest_asyncio.fixture(loop_scope="session")
async def weak_gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway whose ECO holds nothing back: registration strength near zero and no
    background calibration to raise it, so the flagged answer is the bare model's and only the
    output guard can keep the names out."""
    settings = gateway_settings(tmp_path, calibration_workers=0, eco_default_sigma=0.001)
    async with running_gateway(settings) as gw:
        yield gw


async def test_an_intervened_answer_never_says_a_name_the_user_did_not_write(
    weak_gateway: Gateway,
) -> None:
    gw = weak_gateway
    created = await gw.http.post("/admin/targets", json=TARGET, headers=ADMIN)
    assert created.status_code == 201
    verdict = await gw.http.post("/admin/classify", json={"text": QUESTION}, headers=ADMIN)
    assert verdict.json()["flagged"] is True
    placeholder = gw.settings.redaction_placeholder
    for stream in (False, True):
        answer = await answer_of(gw, QUESTION, stream)
        assert "hogwarts" not in answer.casefold(), answer
        # The model named the school (it is not held back here) and the guard took it out;
        # "Harry Potter", which the user wrote, stays.
        assert placeholder in answer, answer
        assert "Harry Potter" in answer, answer
