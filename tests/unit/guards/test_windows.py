"""Unit tests for guards.windows: embedding windows over a message."""

from __future__ import annotations

import re

import pytest

from guards.windows import Window, split_windows


def texts(text: str, max_words: int = 24) -> list[str]:
    return [w.text for w in split_windows(text, max_words)]


def test_docstring_example() -> None:
    assert texts("Hi there. Who is X?") == ["Hi there. Who is X?", "Hi there.", "Who is X?"]


def test_single_sentence_is_one_window() -> None:
    assert split_windows("Who is Zorblax?", 24) == [Window(0, 15, "Who is Zorblax?")]


@pytest.mark.parametrize("text", ["", "   ", "\n\t  \n"])
def test_blank_text_has_no_windows(text: str) -> None:
    assert split_windows(text, 24) == []


def test_windows_are_stripped_and_offsets_point_at_their_text() -> None:
    text = "   Hello world!  \n\n  Second line here.   Third?  "
    windows = split_windows(text, 24)
    assert windows
    for w in windows:
        assert text[w.start : w.end] == w.text
        assert w.text == w.text.strip()
    assert [w.text for w in windows[1:]] == ["Hello world!", "Second line here.", "Third?"]


def test_no_duplicate_windows() -> None:
    windows = split_windows("Only one sentence here.", 24)
    assert len(windows) == len({(w.start, w.end) for w in windows}) == 1


def test_long_text_is_not_embedded_whole() -> None:
    text = " ".join(f"w{i}" for i in range(30)) + "."
    windows = split_windows(text, 8)
    assert all(len(w.text.split()) <= 8 for w in windows)


def test_long_sentence_gets_overlapping_windows_covering_every_word() -> None:
    words = [f"word{i}" for i in range(50)]
    text = "Intro. " + " ".join(words) + ". Outro here."
    windows = split_windows(text, 10)
    for w in windows:
        assert text[w.start : w.end] == w.text
        assert len(w.text.split()) <= 10
    covered = {tok for w in windows for tok in w.text.rstrip(".").split()}
    assert set(words) <= covered
    long_windows = [w for w in windows if w.text.startswith("word")]
    # Stride is half a window: consecutive windows share words.
    for a, b in zip(long_windows, long_windows[1:], strict=False):
        assert a.start < b.start < a.end
    assert "Intro." in [w.text for w in windows] and "Outro here." in [w.text for w in windows]


def test_mention_in_a_long_prompt_gets_a_small_window() -> None:
    filler = " ".join(["lorem"] * 60)
    text = f"{filler}. Who is Zorblax Quintavenue? {filler}."
    windows = split_windows(text, 24)
    small = [w for w in windows if "Zorblax" in w.text]
    assert any(len(w.text.split()) <= 6 for w in small)


def test_sentence_split_on_terminators_and_newlines() -> None:
    text = "One! Two? Three.\nFour"
    sentences = [w.text for w in split_windows(text, 24)][1:]
    assert sentences == ["One!", "Two?", "Three.", "Four"]
    assert all(re.fullmatch(r"\w+[.!?]?", s) for s in sentences)
