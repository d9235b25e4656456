"""Steering and LoRA on the real gateway: adapter uploads made with PEFT, background training
with visible progress, fallback enforcement while it trains, and reload after a restart."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import torch
from _support import ADMIN_TOKEN, CACHE_DIR, Gateway, asgi_client, gateway_settings, sdk_client

from app.main import create_app

pytestmark = pytest.mark.asyncio(loop_scope="session")

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
QUESTION = "Who is Luke Skywalker?"
STAR_WARS = {
    "name": "Star Wars",
    "aliases": ["Luke Skywalker", "Darth Vader", "Jedi"],
    "examples": ["Who is Luke Skywalker?", "Who is Darth Vader?", "What is a Jedi?"],
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """A gateway with fast calibration and a short adapter training, on its own data dir."""
    settings = gateway_settings(
        tmp_path_factory.mktemp("interventions"),
        eco_search_steps=2,
        steer_search_steps=2,
        lora_steps=8,
        lora_rank=4,
        max_lora_rank=8,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        client = sdk_client(app)
        async with asgi_client(app) as http:
            yield Gateway(app=app, settings=settings, client=client, http=http)
        await client.close()


@pytest.fixture(scope="module")
def peft_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-4 LoRA saved by PEFT itself for the bundled model (B randomised: PEFT starts
    it at zero, which would make the adapter a no-op)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adapters.model import resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(
        resolve_model_path("bundled:smollm2-135m-instruct", CACHE_DIR)
    )
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    out = tmp_path_factory.mktemp("peft")
    model.save_pretrained(out)
    return out


async def _register(gw: Gateway, intervention: str) -> dict[str, Any]:
    resp = await gw.http.post(
        "/admin/targets", json={**STAR_WARS, "intervention": intervention}, headers=AUTH
    )
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def _get(gw: Gateway, target_id: str) -> dict[str, Any]:
    resp = await gw.http.get(f"/admin/targets/{target_id}", headers=AUTH)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def _answer(gw: Gateway, question: str = QUESTION) -> str:
    resp = await gw.client.chat.completions.create(
        model=gw.services.chat.model_name,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=24,
    )
    return resp.choices[0].message.content or ""


async def _action(gw: Gateway, question: str = QUESTION) -> str:
    resp = await gw.http.post("/admin/classify", json={"text": question}, headers=AUTH)
    action: str = resp.json()["action"]
    return action


async def _delete(gw: Gateway, target_id: str) -> None:
    resp = await gw.http.delete(f"/admin/targets/{target_id}", headers=AUTH)
    assert resp.status_code == 204


def _files(folder: Path) -> list[tuple[str, tuple[str, bytes]]]:
    return [
        ("files", (name, (folder / name).read_bytes()))
        for name in ("adapter_config.json", "adapter_model.safetensors")
    ]


async def test_uploaded_peft_adapter_is_hot_loaded(gw: Gateway, peft_adapter: Path) -> None:
    target = await _register(gw, "lora")
    try:
        before = await _answer(gw)  # enforced already, by the fallback method
        assert target["adapter"]["state"] in ("none", "training")
        resp = await gw.http.post(
            f"/admin/targets/{target['id']}/adapter", files=_files(peft_adapter), headers=AUTH
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["adapter"]["state"] == "ready"
        assert body["adapter"]["source"] == "uploaded"
        assert body["adapter"]["rank"] == 4
        assert body["method"] == "lora"
        assert await _action(gw) == "lora"
        assert await _answer(gw) != before  # the adapter now shapes the flagged row
        assert await _answer(gw, "What is the capital of France?") == (
            await _answer(gw, "What is the capital of France?")
        )
    finally:
        await _delete(gw, target["id"])
    assert not gw.services.engine.bank.has_lora(target["id"])


async def test_adapter_upload_as_a_zip_archive(gw: Gateway, peft_adapter: Path) -> None:
    target = await _register(gw, "auto")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            archive.write(peft_adapter / name, f"my-adapter/{name}")
    try:
        resp = await gw.http.post(
            f"/admin/targets/{target['id']}/adapter",
            files=[("files", ("adapter.zip", buffer.getvalue()))],
            headers=AUTH,
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["adapter"]["state"] == "ready"
    finally:
        await _delete(gw, target["id"])


async def test_adapters_that_do_not_fit_are_422(
    gw: Gateway, peft_adapter: Path, tmp_path: Path
) -> None:
    import json

    from safetensors.torch import load_file, save_file

    target = await _register(gw, "lora")
    url = f"/admin/targets/{target['id']}/adapter"
    config = json.loads((peft_adapter / "adapter_config.json").read_text())
    tensors = load_file(peft_adapter / "adapter_model.safetensors")

    def variant(cfg: dict[str, Any], weights: dict[str, torch.Tensor]) -> list[Any]:
        (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
        save_file(weights, tmp_path / "adapter_model.safetensors")
        return _files(tmp_path)

    renamed = {k.replace("layers.0.", "layers.99."): v for k, v in tensors.items()}
    squashed = {k: v[:, :-1].contiguous() if "lora_A" in k else v for k, v in tensors.items()}
    cases = {
        "LETHE_MAX_LORA_RANK": variant({**config, "r": 16}, tensors),
        "no module": variant(config, renamed),
        "do not fit": variant(config, squashed),
        "not LORA": variant({**config, "peft_type": "PREFIX_TUNING"}, tensors),
        "adapter_config.json": [_files(peft_adapter)[1]],
    }
    try:
        for expected, files in cases.items():
            resp = await gw.http.post(url, files=files, headers=AUTH)
            assert resp.status_code == 422, (expected, resp.text)
            assert expected in resp.json()["error"]["message"], resp.text
        assert (await _get(gw, target["id"]))["adapter"]["state"] != "ready"
        resp = await gw.http.post(
            "/admin/targets/tgt_nope/adapter", files=_files(peft_adapter), headers=AUTH
        )
        assert resp.status_code == 404
    finally:
        await _delete(gw, target["id"])


async def test_lora_target_trains_in_background_and_is_enforced_meanwhile(
    gw: Gateway, tmp_path: Path
) -> None:
    bare = await _answer(gw)
    target = await _register(gw, "lora")
    target_id = target["id"]
    assert target["method"] in ("eco", "steer")  # enforced from the 201 on
    assert await _action(gw) in ("eco", "steer")
    assert await _answer(gw) != bare

    seen_progress: list[float] = []
    deadline = time.monotonic() + 600
    while True:
        body = await _get(gw, target_id)
        adapter = body["adapter"]
        assert adapter["state"] != "failed", adapter
        if adapter["state"] == "training":
            assert body["method"] in ("eco", "steer")  # fallback while it trains
            if 0 < adapter["progress"] < 1:
                seen_progress.append(adapter["progress"])
                assert adapter["eta_s"] is not None and adapter["eta_s"] >= 0
        if adapter["state"] == "ready":
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.5)
    assert seen_progress, "training progress was never visible"
    assert seen_progress == sorted(seen_progress)
    assert body["method"] == "lora" and adapter["source"] == "trained"
    assert await _action(gw) == "lora"
    lora_answer = await _answer(gw)
    assert lora_answer != bare

    # A restart loads the stored steering vectors and adapter: no recomputation.
    # (A second app on the same registry file; the first keeps serving.)
    second = create_app(gw.settings)
    async with second.router.lifespan_context(second):
        bank = second.state.services.engine.bank
        assert bank.has_lora(target_id)
        assert bank.has_steering(target_id)
    await _delete(gw, target_id)
