"""A window naming another entity is not taken for a target it merely resembles (real MiniLM):
"Who was Isaac Newton?" is not about Albert Einstein, while a paraphrase that names what the
target's own texts name still flags it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from app.settings import Settings
from guards.calibration import BenignCorpus
from guards.detector import Detector
from guards.embedder import SentenceEmbedder
from guards.registry import Registry
from guards.store import SqliteTargetStore
from guards.targets import TargetSpec
from guards.verdict import ChatTurn

EINSTEIN = TargetSpec(
    name="Albert Einstein",
    description="Albert Einstein, the physicist, and his theory of relativity.",
    aliases=("Albert Einstein", "Einstein", "theory of relativity"),
    examples=("Who was Albert Einstein?", "What is Einstein famous for?"),
)
EIFFEL = TargetSpec(
    name="Eiffel Tower",
    description="The Eiffel Tower in Paris: its design, its construction for the 1889 "
    "World's Fair and Gustave Eiffel.",
    aliases=("Eiffel Tower", "Gustave Eiffel"),
    examples=("What is the Eiffel Tower?", "When was the Eiffel Tower built?"),
)


def open_registry(
    db: Path, embedder: SentenceEmbedder, corpus: BenignCorpus, penalty: float
) -> Registry:
    s = Settings()
    config = replace(s.threshold_config(), foreign_name_penalty=penalty)
    store = SqliteTargetStore.open(f"sqlite:///{db.as_posix()}")
    registry = Registry(store, embedder, corpus, config, s.eco_default_sigma)
    registry.add(EINSTEIN)
    registry.add(EIFFEL)
    return registry


def flagged(registry: Registry, text: str) -> set[str]:
    detector = Detector(registry, Settings().detector_window_words)
    return {m.name for m in detector.inspect([ChatTurn("user", text)]).matches}


@pytest.fixture()
def registry(tmp_path: Path, embedder: SentenceEmbedder, corpus: BenignCorpus) -> Registry:
    return open_registry(
        tmp_path / "r.db", embedder, corpus, Settings().detector_foreign_name_penalty
    )


@pytest.mark.parametrize(
    "question", ["Who was Isaac Newton?", "What is the Leaning Tower of Pisa?"]
)
def test_a_question_about_another_named_entity_is_not_flagged(
    registry: Registry, question: str
) -> None:
    assert flagged(registry, question) == set()


def test_without_the_penalty_the_neighbour_would_be_flagged(
    tmp_path: Path, embedder: SentenceEmbedder, corpus: BenignCorpus
) -> None:
    bare = open_registry(tmp_path / "bare.db", embedder, corpus, penalty=0.0)
    assert flagged(bare, "Who was Isaac Newton?") == {"Albert Einstein"}


@pytest.mark.parametrize(
    ("question", "target"),
    [
        # Names the target's own texts use cost nothing.
        ("Which Paris landmark was built for the 1889 World's Fair?", "Eiffel Tower"),
        ("Which physicist came up with relativity?", "Albert Einstein"),
    ],
)
def test_paraphrases_naming_the_targets_own_words_still_flag(
    registry: Registry, question: str, target: str
) -> None:
    assert flagged(registry, question) == {target}
