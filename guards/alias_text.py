"""How the alias matcher reads text: case, accents, apostrophes and leetspeak folded away,
and the spellings and one-deletion variants its index is keyed by."""

from __future__ import annotations

import functools
import unicodedata

APOSTROPHES = frozenset("'\u2019\u02bc\u2018`\u00b4")
LEET_SYMBOLS = {"@": "a", "$": "s", "!": "i"}
LEET_DIGITS = {"0": "o", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g"}
# Text char -> alias letters it may stand for.  '1' is ambiguous (i or l), so
# normalise() keeps it and comparisons accept either at zero cost.
EQUIV = {**LEET_DIGITS, "1": "il"}
# Letters that NFKD does not decompose into an ASCII base letter.
SPECIAL_FOLD = {"ø": "o", "đ": "d", "ð": "d", "ł": "l", "æ": "ae", "œ": "oe", "þ": "th", "ı": "i"}
# Coarse alphabet for the q-gram prefilter: merges everything EQUIV may equate.
COARSE = str.maketrans({**LEET_DIGITS, "1": "i", "l": "i"})


@functools.lru_cache(maxsize=8192)
def fold(ch: str) -> str:
    """Lower-case, accent-free form of one character ('' for a bare combining mark)."""
    if ch.isascii():
        return ch.lower()
    decomposed = unicodedata.normalize("NFKD", ch)
    folded = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return "".join(SPECIAL_FOLD.get(c, c) for c in folded)


@functools.lru_cache(maxsize=512)
def accepts(letter: str) -> frozenset[str]:
    """Text characters that count as equal to an alias character (leetspeak-aware)."""
    same = {letter, *EQUIV.get(letter, "")}
    return frozenset(same | {d for d, letters in EQUIV.items() if letter in letters})


def normalise(text: str) -> tuple[str, list[int]]:
    """Normalised text plus, for each normalised char, the index of the original char it came from.

    Output: lower-case, accent-free words joined by single spaces.  Apostrophes vanish
    ("O'Brien" -> "obrien"), a possessive "'s" is dropped ("Vader's" -> "vader"), and in
    words with a letter leet digits/symbols become letters, except the ambiguous '1'.
    """
    chars: list[str] = []
    src: list[int] = []
    for i, c in enumerate(text):
        folded = "'" if c in APOSTROPHES else fold(c)
        chars.extend(folded)
        src.extend([i] * len(folded))
    out: list[str] = []
    out_src: list[int] = []
    word: list[int] = []  # indices into chars of the word being built
    n, i = len(chars), 0
    while i <= n:  # i == n acts as a final separator
        ch = chars[i] if i < n else " "
        nxt = chars[i + 1] if i + 1 < n else " "
        if ch == "'":
            after = chars[i + 2] if i + 2 < n else " "
            i += 2 if word and nxt == "s" and not after.isalnum() else 1
            continue
        # A leet symbol is a letter when a letter/digit follows ("D@rth") or it ends an
        # already-leet word ("J3d!"), but not after a plain word ("Hi!").
        if ch.isalnum() or (
            ch in LEET_SYMBOLS and (nxt.isalnum() or any(not chars[j].isalpha() for j in word))
        ):
            word.append(i)
        elif word:
            letters = any(chars[j].isalpha() for j in word)
            for j in word:
                c = LEET_SYMBOLS.get(chars[j], chars[j])
                out.append(LEET_DIGITS.get(c, c) if letters else c)
                out_src.append(src[j])
            out.append(" ")  # the separator that ended the word; the last one is dropped
            out_src.append(src[i] if i < n else len(text))
            word.clear()
        i += 1
    return "".join(out[:-1]), out_src[:-1]


def deletions(word: str, fuzzy: bool) -> set[str]:
    """The word plus, if fuzzy, its one-deletion variants (first letter always kept)."""
    out = {word}
    if fuzzy and len(word) > 2:
        out.update(word[:i] + word[i + 1 :] for i in range(1, len(word)))
    return out


def expand(token: str) -> set[str]:
    """Spellings of a text token with leet digits resolved ('1' read as 'i' and as 'l')."""
    if token.isalpha():
        return {token}
    base = "".join(LEET_DIGITS.get(c, c) for c in token)
    # Mixed i/l readings are left to the DP, which accepts '1' as either letter.
    return {token, base, base.replace("1", "i"), base.replace("1", "l")}
