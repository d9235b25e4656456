"""Proper names in a window, and whether they belong to a target's vocabulary.

An embedding match can be the shape of a question rather than its subject: "Who was Isaac
Newton?" lies close to an Albert Einstein target, "What is the Leaning Tower of Pisa?" to an
Eiffel Tower one. A window that names an entity the target's own texts never mention (a run of
capitalised words, such as "Isaac Newton") is most likely about that other entity,
so the detector lowers its embedding score for that target. Names the target's texts do use
("World's Fair" for the Eiffel Tower) and single capitalised words (nationalities, "Paris")
cost nothing: paraphrases describe their target with them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from guards.language import english_function_words, looks_english

_TOKEN = re.compile(r"[^\W\d_][\w'’-]*", re.UNICODE)
_POSSESSIVE = re.compile(r"['’]s?$")


def _key(word: str) -> str:
    """Casefolded, without a possessive ending: "Newton's" and "Newton" are one name."""
    return _POSSESSIVE.sub("", word.casefold())


def proper_names(text: str) -> tuple[frozenset[str], ...]:
    """Runs of capitalised words with at least two that are not function words or shorter
    than three letters ("Isaac Newton", "Leaning Tower"; not "In Paris", "Dr. Who"), each as a
    set of casefolded words.

    Only for English text: other languages capitalise differently and go to the multilingual
    channel.

    Example:
        >>> sorted(sorted(n) for n in proper_names("Isaac Newton? In Paris, ask Dr. Who."))
        [['isaac', 'newton']]
    """
    if not looks_english(text):
        return ()
    function_words = english_function_words()
    runs: list[frozenset[str]] = []

    def close(run: list[str]) -> None:
        name = frozenset(w for w in run if len(w) > 2 and w not in function_words)
        if len(name) >= 2:
            runs.append(name)

    run: list[str] = []
    prev_end = 0
    for m in _TOKEN.finditer(text):
        word = m.group(0)
        capital = word[0].isupper()
        if not (capital and not text[prev_end : m.start()].strip()):  # the run ends here
            close(run)
            run = []
        if capital:
            run.append(_key(word))
        prev_end = m.end()
    close(run)
    return tuple(runs)


def vocabulary(texts: Iterable[str]) -> frozenset[str]:
    """The casefolded words of a target's texts (possessive endings dropped, like names)."""
    return frozenset(_key(w) for t in texts for w in _TOKEN.findall(t))


def names_foreign(names: tuple[frozenset[str], ...], known: frozenset[str]) -> bool:
    """Whether some name has a word that `known` (a target's vocabulary) does not contain."""
    return any(not name <= known for name in names)
