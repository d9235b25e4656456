"""The English gate that routes windows to the cross-lingual embedder."""

from __future__ import annotations

import pytest

from guards.language import english_function_words, looks_english


@pytest.mark.parametrize(
    "text",
    [
        "Who discovered gravity?",
        "Who was Albert Einstein?",
        "Tell me about Star Wars.",
        "How many legs does a spider have?",
        "17 + 38 = ?",  # no words: nothing to translate
        "",
    ],
)
def test_english_text_stays_with_the_english_embedder(text: str) -> None:
    assert looks_english(text)


@pytest.mark.parametrize(
    "text",
    [
        "¿Quién descubrió la gravedad?",
        "¿Quién fue la primera persona en caminar en la Luna?",
        "Qui a découvert la gravité ?",
        "Wer hat die Schwerkraft entdeckt?",
        "Was ist der Unterschied zwischen seit und seid?",  # 'was' is German here
        "日本で一番長い川は何ですか？",
    ],
)
def test_other_languages_are_routed_to_the_cross_lingual_embedder(text: str) -> None:
    assert not looks_english(text)


def test_word_list_leaves_out_words_shared_with_other_languages() -> None:
    words = english_function_words()
    assert {"the", "who", "what", "about"} <= words
    assert not {"a", "in", "me", "no", "was", "#"} & words
