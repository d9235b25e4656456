"""Splits text into embedding windows so that a mention inside a long prompt is not diluted."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*", re.UNICODE)
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Window:
    """A slice of one message's content."""

    start: int
    end: int
    text: str


def split_windows(text: str, max_words: int) -> list[Window]:
    """Whole text (when short), each sentence, and overlapping word windows of long sentences.

    Example:
        >>> [w.text for w in split_windows("Hi there. Who is X?", 24)]
        ['Hi there. Who is X?', 'Hi there.', 'Who is X?']
    """
    windows: list[Window] = []
    seen: set[tuple[int, int]] = set()

    def push(start: int, end: int) -> None:
        piece = text[start:end]
        stripped = piece.strip()
        if not stripped:
            return
        start += len(piece) - len(piece.lstrip())
        end = start + len(stripped)
        if (start, end) not in seen:
            seen.add((start, end))
            windows.append(Window(start, end, stripped))

    words = list(_WORD.finditer(text))
    if len(words) <= max_words:
        push(0, len(text))
    for sent in _SENTENCE.finditer(text):
        sent_words = list(_WORD.finditer(text, sent.start(), sent.end()))
        if len(sent_words) <= max_words:
            push(sent.start(), sent.end())
            continue
        stride = max(1, max_words // 2)
        for i in range(0, len(sent_words), stride):
            chunk = sent_words[i : i + max_words]
            push(chunk[0].start(), chunk[-1].end())
            if i + max_words >= len(sent_words):
                break
    return windows
