"""An answer to an intervened request never says the matched target's names that the user did
not write: where the intervention does not hold the model back, the name is redacted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from _support import ADMIN, MODEL_ID, Gateway, asgi_client, gateway_settings, sdk_client

from app.main import create_app

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
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        client = sdk_client(app)
        async with asgi_client(app) as http:
            try:
                yield Gateway(app=app, settings=settings, client=client, http=http)
            finally:
                await client.close()


async def _answer(gw: Gateway, stream: bool) -> str:
    kwargs = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": 32,
    }
    if not stream:
        resp = await gw.client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
        return str(resp.choices[0].message.content)
    chunks = await gw.client.chat.completions.create(stream=True, **kwargs)  # type: ignore[call-overload]
    return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])


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
        answer = await _answer(gw, stream)
        assert "hogwarts" not in answer.casefold(), answer
        # The model named the school (it is not held back here) and the guard took it out;
        # "Harry Potter", which the user wrote, stays.
        assert placeholder in answer, answer
        assert "Harry Potter" in answer, answer
