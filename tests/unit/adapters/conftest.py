"""Fixtures for adapter unit tests: the real bundled tokenizer, loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

CACHE_DIR = Path.home() / ".cache" / "lethe"


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """The bundled model's tokenizer (the GGUF is converted into the cache on first use)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from adapters.model import resolve_model_path

    return AutoTokenizer.from_pretrained(
        resolve_model_path("bundled:smollm2-135m-instruct", CACHE_DIR)
    )
