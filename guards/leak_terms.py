"""Words whose appearance in an answer shows that the model still knows a target."""

from __future__ import annotations

import re
from collections.abc import Iterable

from guards.targets import TargetSpec

WORD_PATTERN = re.compile(r"[^\W_][\w'’-]*[^\W_]|\d{3,}", re.UNICODE)
_WORD = WORD_PATTERN


def words(text: str) -> set[str]:
    """Lower-cased words of a text."""
    return {w.casefold().strip("'’-") for w in _WORD.findall(text)}


def corpus_vocabulary(prompts: Iterable[str]) -> set[str]:
    """Every word the benign corpus uses: common words that say nothing about a target."""
    vocab: set[str] = set()
    for p in prompts:
        vocab |= words(p)
    return vocab


def answer_terms(questions: list[str], answers: list[str], common: set[str]) -> set[str]:
    """Rare names and numbers the model added from memory when answering the questions."""
    terms: set[str] = set()
    for question, answer in zip(questions, answers, strict=True):
        asked = words(question)
        for raw in _WORD.findall(answer):
            w = raw.casefold().strip("'’-")
            if len(w) < 4 or w in asked or w in common:
                continue
            if raw[0].isupper() or any(c.isdigit() for c in raw):
                terms.add(w)
    return terms


def derive_leak_terms(
    spec: TargetSpec, questions: list[str], answers: list[str], common: set[str]
) -> set[str]:
    """Distinctive words of the target: from its names, and the bare model's own answers.

    A word counts when it is not common (absent from the benign corpus) and, for answer words,
    is a name or a number (capitalised or with a digit) that the question did not contain:
    that is what the bare model adds from memory.

    Example:
        >>> spec = TargetSpec(name="Neil Armstrong")
        >>> sorted(derive_leak_terms(spec, ["Who?"], ["He flew Apollo in 1969."], {"he"}))
        ['1969', 'apollo', 'armstrong', 'neil']
    """
    terms: set[str] = set()
    for alias in spec.all_aliases():
        terms |= {w for w in words(alias) if len(w) >= 4 and w not in common}
    return terms | answer_terms(questions, answers, common)


def leaks(answer: str, question: str, terms: set[str]) -> bool:
    """True when the answer names a leak term the question did not."""
    said = words(answer) - words(question)
    return bool(said & terms)
