"""Questions in other languages, caught by the multilingual channel (real USE and MiniLM)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _support import CACHE_DIR

from app.main import crosslingual_channel
from app.settings import Settings
from guards.calibration import BenignCorpus
from guards.detector import Detector
from guards.embedder import USE_MULTILINGUAL, SentenceEmbedder
from guards.registry import Registry
from guards.store import SqliteTargetStore
from guards.targets import TargetSpec
from guards.verdict import ChatTurn

NEWTON = TargetSpec(
    name="Isaac Newton",
    description="Isaac Newton, his discovery of gravity and his laws of motion.",
    aliases=("Isaac Newton", "Newton's laws"),
    examples=("Who discovered gravity?", "Who was Isaac Newton?"),
)
MOON = TargetSpec(
    name="Apollo 11 Moon landing",
    description="The first crewed Moon landing, Apollo 11 in 1969, and its astronauts.",
    aliases=("Apollo 11", "Neil Armstrong"),
    examples=("Who was the first person to walk on the Moon?",),
)


def settings() -> Settings:
    return Settings(cache_dir=CACHE_DIR)


def open_registry(db: Path, embedder: SentenceEmbedder, corpus: BenignCorpus) -> Registry:
    s = settings()
    config = s.threshold_config()
    store = SqliteTargetStore.open(f"sqlite:///{db.as_posix()}")
    registry = Registry(
        store,
        embedder,
        corpus,
        config,
        s.eco_default_sigma,
        crosslingual=crosslingual_channel(s, config),
    )
    registry.load()
    return registry


def flagged(registry: Registry, text: str) -> set[str]:
    verdict = Detector(registry, settings().detector_window_words).inspect([ChatTurn("user", text)])
    return {m.name for m in verdict.matches}


@pytest.fixture()
def registry(tmp_path: Path, embedder: SentenceEmbedder, corpus: BenignCorpus) -> Registry:
    registry = open_registry(tmp_path / "registry.db", embedder, corpus)
    registry.add(NEWTON)
    registry.add(MOON)
    return registry


@pytest.mark.parametrize(
    ("question", "target"),
    [
        ("¿Quién descubrió la gravedad?", "Isaac Newton"),
        ("Qui a découvert la gravité ?", "Isaac Newton"),
        ("Wer hat die Schwerkraft entdeckt?", "Isaac Newton"),
        ("¿Quién fue la primera persona en caminar en la Luna?", "Apollo 11 Moon landing"),
        ("Qui a marché sur la Lune en premier ?", "Apollo 11 Moon landing"),
    ],
)
def test_a_translated_question_flags_its_target(
    registry: Registry, question: str, target: str
) -> None:
    assert flagged(registry, question) == {target}


@pytest.mark.parametrize(
    "question",
    [
        "¿Quién fue Albert Einstein?",
        "¿Quién fue Yuri Gagarin?",
        "¿De qué está hecha la Luna?",
        "Qui était Galilée ?",
        "Who was Albert Einstein?",
        "¿Cuál es la capital de Argentina?",
    ],
)
def test_translated_neighbours_and_english_stay_unflagged(
    registry: Registry, question: str
) -> None:
    assert flagged(registry, question) == set()


def test_the_channel_threshold_respects_its_floor(registry: Registry) -> None:
    channel = registry.crosslingual
    assert channel is not None and channel.embedder.name == USE_MULTILINGUAL
    floor = settings().crosslingual_min_threshold
    for target in registry.list():
        threshold = channel.threshold(target.id)
        assert threshold is not None and threshold >= floor


def test_deleting_a_target_stops_its_cross_lingual_matches(registry: Registry) -> None:
    newton = next(t for t in registry.list() if t.spec.name == "Isaac Newton")
    assert registry.remove(newton.id)
    assert flagged(registry, "¿Quién descubrió la gravedad?") == set()
    assert registry.crosslingual is not None and registry.crosslingual.threshold(newton.id) is None


def test_a_restart_rebuilds_the_channel_from_the_store(
    tmp_path: Path, registry: Registry, embedder: SentenceEmbedder, corpus: BenignCorpus
) -> None:
    registry.store.close()
    reopened = open_registry(tmp_path / "registry.db", embedder, corpus)
    assert flagged(reopened, "¿Quién descubrió la gravedad?") == {"Isaac Newton"}


def test_turned_off_the_english_embedder_alone_misses_translations(
    tmp_path: Path, embedder: SentenceEmbedder, corpus: BenignCorpus
) -> None:
    s = settings()
    config = s.threshold_config()
    store = SqliteTargetStore.open(f"sqlite:///{(tmp_path / 'off.db').as_posix()}")
    registry = Registry(store, embedder, corpus, config, s.eco_default_sigma)
    registry.add(NEWTON)
    assert flagged(registry, "¿Quién descubrió la gravedad?") == set()
