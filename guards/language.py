"""Tells English text from other languages, to route windows to the embedder that reads them."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

_LETTERS = re.compile(r"[^\W\d_]+", re.UNICODE)


@lru_cache(maxsize=1)
def english_function_words() -> frozenset[str]:
    """The packaged list of frequent English function words."""
    raw = resources.files("guards").joinpath("data/english_function_words.txt").read_text("utf-8")
    return frozenset(
        line.strip().casefold()
        for line in raw.splitlines()
        if line.strip() and not line.startswith("#")
    )


def looks_english(text: str, min_share: float = 0.1) -> bool:
    """Whether at least `min_share` of the words are English function words.

    Text without words (numbers, symbols) counts as English: there is nothing to translate.
    A wrong "not English" only costs one more embedding search; a wrong "English" leaves the
    text to the English embedder alone.

    Example:
        >>> looks_english("Who discovered gravity?"), looks_english("¿Quién descubrió la gravedad?")
        (True, False)
    """
    words = [w.casefold() for w in _LETTERS.findall(text)]
    if not words:
        return True
    known = english_function_words()
    return sum(w in known for w in words) >= min_share * len(words)
