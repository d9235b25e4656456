"""Integration fixtures: ONE real gateway (real model, embedder, SQLite registry) per session.

The app's lifespan is entered once on the session event loop; tests talk to it through the
official `openai` client and a raw httpx client, both over an in-process ASGI transport.
Integration test modules must run on the session loop:
`pytestmark = pytest.mark.asyncio(loop_scope="session")`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from _support import CACHE_DIR, Gateway, gateway_settings, running_gateway

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.main import detector_embedder  # noqa: E402
from app.settings import Settings  # noqa: E402
from guards.calibration import BenignCorpus, load_benign_prompts  # noqa: E402
from guards.embedder import Embedder  # noqa: E402


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    async with running_gateway(gateway_settings(tmp_path_factory.mktemp("gateway"))) as gw:
        yield gw


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The detector's bundled sentence embedder as the app loads it, for registry-level tests."""
    settings = Settings()
    return detector_embedder(settings)


@pytest.fixture(scope="session")
def corpus(embedder: Embedder) -> BenignCorpus:
    """The packaged benign corpus, embedded once (cached on disk like the app does)."""
    return BenignCorpus(
        load_benign_prompts(), embedder, Settings().detector_window_words, CACHE_DIR
    )
