"""Alias matcher for Lethe's unlearning guard: finds mentions of forget targets' aliases.

Tolerates case, accents, punctuation, spaced letters ("D a r t h"), joined/split words
("starwars"), leetspeak ("D4rth", "1saac") and small typos (Damerau edits, budget scaled
to alias length).  Matching runs on a *letter stream* (normalised tokens concatenated)
where a mention must start and end on a token boundary (whole words only) and is checked
by a banded edit-distance DP.  DP candidates come from a symmetric-deletion index of each
alias's leading word(s), so find() costs a few dict probes per token, not a DP per alias.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from guards.alias_text import COARSE, LEET_SYMBOLS, accepts, deletions, expand, normalise

_MAX_PROBE = 40  # longer tokens cannot be an alias's leading word(s); skip them (DoS guard)

Rows = dict[int, list[int]]  # DP rows keyed by text prefix length
Match = tuple["_Alias", int, int, int]  # (alias, stream start, stream length, edits)


@dataclass(frozen=True)
class AliasMention:
    """One alias found in a text."""

    target_id: str
    alias: str  # the registered alias that matched
    start: int  # character offset in the ORIGINAL text (inclusive)
    end: int  # character offset in the ORIGINAL text (exclusive)
    edits: int  # edit distance used (0 = exact after normalisation)


@dataclass(frozen=True, eq=False)
class _Alias:
    """A compiled alias; identity-hashed so equal spellings of two targets stay distinct."""

    target_id: str
    text: str  # as registered
    key: str  # normalised letters, spaces removed
    acc: tuple[frozenset[str], ...]  # per key char: text chars accepted for it
    word_of: tuple[int, ...]  # per key char: index of the alias word it belongs to
    caps: tuple[int, ...]  # per alias word: most edits it may absorb
    budget: int  # most edits for the whole alias
    max_tokens: int  # most multi-letter text tokens one mention may span
    probes: frozenset[str]  # index keys under which this alias is filed
    pieces: tuple[tuple[int, str], ...]  # (offset, coarse 2-gram) for the prefilter
    need: int  # pieces that must appear near their offset for a match to be possible


def _compile(target_id: str, raw: str) -> _Alias | None:
    """Precompute everything find() needs about one alias (None if it has no letters)."""
    words = normalise(raw)[0].split()
    if not words:
        return None
    key = "".join(words)
    m = len(key)
    budget = 0 if m <= 4 else 1 if m <= 9 else 2
    caps = tuple(math.ceil(len(w) / 5) if len(w) > 3 else 0 for w in words)
    probes: set[str] = set()
    for j in {*range(1, min(len(words), 3) + 1), len(words)}:
        # A short first word ("the", "Han") would make every "the" a candidate, so
        # such aliases are filed under their joined first words only.
        if j > 1 or len(words) == 1 or len(words[0]) > 3:
            # Probes tolerate one edit; the DP later allows the full budget.
            probes |= deletions("".join(words[:j]), min(budget, sum(caps[:j])) > 0)
    coarse = key.translate(COARSE)
    # Last pieces first: past the (probed) first word they are the discriminating ones.
    pieces = tuple((o, coarse[o : o + 2]) for o in range(m - m % 2 - 2, -1, -2))
    return _Alias(
        target_id=target_id,
        text=raw,
        key=key,
        acc=tuple(accepts(c) for c in key),
        word_of=tuple(i for i, w in enumerate(words) for _ in w),
        caps=caps,
        budget=budget,
        # One extra token lets "Sky walker" match "Skywalker" but keeps "an akin" off "Anakin".
        max_tokens=sum(len(w) > 1 for w in words) + (1 if m >= 8 else 0),
        probes=frozenset(probes),
        pieces=pieces,
        need=len(pieces) - 2 * budget,  # an edit spoils at most two pieces
    )


def _plausible(al: _Alias, coarse: str, s: int) -> bool:
    """Cheap q-gram count filter: can coarse[s:] be within al.budget edits of the alias?"""
    k, need, left = al.budget, al.need, len(al.pieces)
    for off, piece in al.pieces:
        # Up to k insertions/deletions shift a piece by at most k positions.
        if coarse.find(piece, max(s, s + off - k), s + off + len(piece) + k) >= 0:
            need -= 1
        left -= 1
        if need <= 0 or left < need:
            break
    return need <= 0


def _swapped(acc: tuple[frozenset[str], ...], text: str, t_end: int, j: int) -> bool:
    """Whether text[t_end-2:t_end] is key[j-2:j] with its two letters swapped."""
    return text[t_end - 1] in acc[j - 2] and text[t_end - 2] in acc[j - 1]


def _align(al: _Alias, text: str, s: int, is_end: list[bool], max_end: int) -> Match | None:
    """Best match of al.key against text[s:s+r], r ending on a boundary <= max_end."""
    key, acc, k = al.key, al.acc, al.budget
    m = len(key)
    limit = min(max_end - s, m + k)
    # Skip the exactly matching prefix (usually the whole first word): while
    # min(r, j) <= same, D[r][j] is simply |r - j|, so no DP is needed there.
    same = 0
    while same < min(m, limit) and text[s + same] in acc[same]:
        same += 1
    big = k + 1  # any value > k is as good as infinity here
    rows: Rows = {}
    for r in range(max(same - 1, 0), same + 1):
        rows[r] = row = [big] * (m + 1)
        for j in range(max(r - k, 0), min(r + k, m) + 1):
            row[j] = abs(r - j)
    ends = [(m - r, m - r, r) for r in range(max(m - k, 1), same + 1) if is_end[s + r]]
    for r in range(same + 1, limit + 1):
        t, prev = text[s + r - 1], rows[r - 1]
        rows[r] = cur = [big] * (m + 1)
        cur[0] = r if r <= k else big
        low = big
        for j in range(max(1, r - k), min(m, r + k) + 1):  # band: |r - j| > k can't be <= k
            v = prev[j - 1]
            if t not in acc[j - 1]:  # inline min(): this loop is find()'s hot spot
                if prev[j] < v:
                    v = prev[j]
                if cur[j - 1] < v:
                    v = cur[j - 1]
                v += 1
                if v > 1 and r > 1 and j > 1 and _swapped(acc, text, s + r, j):
                    v = min(v, rows[r - 2][j - 2] + 1)
            cur[j] = v
            low = v if v < low else low
        if cur[m] <= k and is_end[s + r]:
            ends.append((cur[m], abs(r - m), r))
        if low > k:
            break
    for dist, _, r in sorted(ends):
        if dist == 0 or _within_caps(al, text, s, r, rows, same):
            return al, s, r, dist
    return None


def _within_caps(al: _Alias, text: str, s: int, r: int, rows: Rows, same: int) -> bool:
    """Backtrace one optimal alignment and check no alias word absorbs too many edits."""
    acc, word_of = al.acc, al.word_of
    used = [0] * len(al.caps)
    i, j = r, len(al.key)
    while i > same and j > 0:
        d = rows[i][j]
        if text[s + i - 1] in acc[j - 1] and rows[i - 1][j - 1] == d:
            i, j = i - 1, j - 1
            continue
        if rows[i - 1][j - 1] + 1 == d:  # substitution
            used[word_of[j - 1]] += 1
            i, j = i - 1, j - 1
        elif i > 1 and j > 1 and rows[i - 2][j - 2] + 1 == d and _swapped(acc, text, s + i, j):
            used[word_of[j - 1]] += 1
            i, j = i - 2, j - 2
        elif rows[i][j - 1] + 1 == d:  # alias letter missing from the text
            used[word_of[j - 1]] += 1
            j -= 1
        else:  # extra letter in the text: charge the alias word it follows
            used[word_of[max(j - 1, 0)]] += 1
            i -= 1
    # Within the exact prefix (or before the alias start) only |i - j| plain indels remain.
    for jj in range(i, j):
        used[word_of[jj]] += 1
    used[word_of[max(j - 1, 0)]] += max(i - j, 0)
    return all(u <= c for u, c in zip(used, al.caps, strict=True))


class AliasMatcher:
    """Finds mentions of registered aliases in text, tolerant to obfuscation."""

    def __init__(self) -> None:
        """Create an empty matcher."""
        # One lock guards both dicts: add/remove mutate them in place and find holds
        # the lock while probing and verifying, so it never sees a half-applied update.
        # Pure-Python matching is GIL-bound anyway, so serialising finds costs little.
        self._lock = threading.Lock()
        self._targets: dict[str, list[_Alias]] = {}
        self._index: dict[str, set[_Alias]] = {}

    def add(self, target_id: str, aliases: Sequence[str]) -> None:
        """Register a target's aliases, replacing any it already had."""
        compiled: dict[str, _Alias] = {}
        for raw in aliases:
            al = _compile(target_id, raw)
            if al is not None and al.key not in compiled:  # "Jedi" and "JEDI" are one alias
                compiled[al.key] = al
        with self._lock:
            self._unfile(target_id)
            self._targets[target_id] = list(compiled.values())
            for al in compiled.values():
                for probe in al.probes:
                    self._index.setdefault(probe, set()).add(al)

    def remove(self, target_id: str) -> None:
        """Forget a target and its aliases; unknown ids are ignored."""
        with self._lock:
            self._unfile(target_id)
            self._targets.pop(target_id, None)

    def _unfile(self, target_id: str) -> None:
        """Drop a target's aliases from the index (caller holds the lock)."""
        for al in self._targets.get(target_id, ()):
            for probe in al.probes:
                self._index[probe].discard(al)
                if not self._index[probe]:
                    del self._index[probe]

    def __len__(self) -> int:
        """Number of registered targets."""
        return len(self._targets)

    def target_ids(self) -> set[str]:
        """Ids of the registered targets (a copy)."""
        with self._lock:
            return set(self._targets)

    def find(self, text: str) -> list[AliasMention]:
        """All alias mentions in text, sorted by start; overlaps within a target keep the best."""
        norm, src = normalise(text)
        tokens = norm.split(" ") if norm else []
        stream = "".join(tokens)
        origin = [src[i] for i, ch in enumerate(norm) if ch != " "]
        starts = list(itertools.accumulate((len(t) for t in tokens), initial=0))
        is_end = [False] * (len(stream) + 1)
        for p in starts:
            is_end[p] = True
            # A trailing leet symbol may be punctuation after all ("Y0da!").
            if p and text[origin[p - 1]] in LEET_SYMBOLS:
                is_end[p - 1] = True
        coarse = stream.translate(COARSE)
        multi = list(itertools.accumulate((len(t) > 1 for t in tokens), initial=0))
        token_at = {p: i for i, p in enumerate(starts)}
        found: list[Match] = []
        with self._lock:
            for al, s in self._candidates(tokens, starts):
                if stream[s] not in al.acc[0]:
                    continue  # no typos in the very first letter: "Nader" is not "Vader"
                # Furthest end such that the window spans at most max_tokens long tokens.
                limit = multi[token_at[s]] + al.max_tokens
                max_end, m = starts[bisect.bisect_right(multi, limit) - 1], len(al.key)
                if s + m <= max_end and is_end[s + m] and stream.startswith(al.key, s):
                    found.append((al, s, m, 0))
                elif _plausible(al, coarse, s) and (hit := _align(al, stream, s, is_end, max_end)):
                    found.append(hit)
        mentions = []
        for al, s, r, edits in found:
            end = origin[s + r - 1] + 1
            while end < len(text) and unicodedata.combining(text[end]):
                end += 1  # keep trailing combining accents inside the span
            mentions.append(AliasMention(al.target_id, al.text, origin[s], end, edits))
        return _collapse(mentions)

    def _candidates(self, tokens: list[str], starts: list[int]) -> set[tuple[_Alias, int]]:
        """(alias, stream start) pairs worth a DP, from cheap index probes (lock held)."""
        index = self._index
        cands: set[tuple[_Alias, int]] = set()
        for key, at in _probe_keys(tokens, starts):
            if hits := index.get(key):
                cands.update((al, at) for al in hits)
        return cands

    def keys(self) -> set[str]:
        """Index keys of the registered aliases: a text can mention one of them only if
        `mention_keys(text)` shares a key with this set."""
        with self._lock:
            return set(self._index)


def _word_keys(word: str, fuzzy: bool, at: int) -> Iterator[tuple[str, int]]:
    if len(word) <= _MAX_PROBE:
        for form in expand(word):
            for variant in deletions(form, fuzzy):
                yield variant, at


def _probe_keys(tokens: list[str], starts: list[int]) -> Iterator[tuple[str, int]]:
    """Index keys a text is probed under, each with the stream start it stands for."""
    n, run_end, base, forms = len(tokens), 0, 0, set[str]()
    for i, tok in enumerate(tokens):
        yield from _word_keys(tok, len(tok) >= 4, starts[i])
        if i + 1 < n:  # split words: "Sky walker", "Han Solo"
            yield from _word_keys(tok + tokens[i + 1], len(tok) <= 3, starts[i])
        if len(tok) == 1 and i + 1 < n and len(tokens[i + 1]) == 1:
            # Spaced letters ("D a r t h"): look up joined slices starting here, exact
            # only (the index already holds one-deletion keys) so long runs stay cheap.
            if i >= run_end:  # first letter of a run: spell the whole run once
                run_end = i
                while run_end < n and len(tokens[run_end]) == 1:
                    run_end += 1
                base, forms = starts[i], expand("".join(tokens[i:run_end]))
            lo = starts[i] - base
            for form in forms:
                for stop in range(lo + 3, min(len(form), lo + _MAX_PROBE) + 1):
                    yield form[lo:stop], starts[i]


def mention_keys(text: str) -> frozenset[str]:
    """Every index key `AliasMatcher.find` probes for `text`. A matcher finds no mention in a
    text whose keys miss all of `AliasMatcher.keys()`: a corpus can be narrowed to the texts
    worth a `find` without scanning them all (guards.registry does this per registration)."""
    norm, _ = normalise(text)
    tokens = norm.split(" ") if norm else []
    starts = list(itertools.accumulate((len(t) for t in tokens), initial=0))
    return frozenset(key for key, _ in _probe_keys(tokens, starts))


class KeyedTexts:
    """Texts indexed by their `mention_keys`, so the ones a matcher may find mentions in are
    looked up rather than scanned.

    Example:
        >>> texts = KeyedTexts(["Who was Darth Vader?", "Bake a cake"])
        >>> m = AliasMatcher()
        >>> m.add("t", ["Darth Vader"])
        >>> texts.candidates(m.keys())
        [0]
    """

    def __init__(self, texts: Sequence[str]) -> None:
        self._by_key: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            for key in mention_keys(text):
                self._by_key.setdefault(key, []).append(i)

    def candidates(self, keys: set[str]) -> list[int]:
        """Indices of the texts that share a key with `keys`, in order."""
        found: set[int] = set()
        for key in keys:
            found.update(self._by_key.get(key, ()))
        return sorted(found)


def _collapse(mentions: list[AliasMention]) -> list[AliasMention]:
    """Keep the best of overlapping mentions of the same target; sort by position."""
    kept: list[AliasMention] = []
    for x in sorted(mentions, key=lambda x: (x.edits, x.start - x.end, x.start, x.alias)):
        if all(k.target_id != x.target_id or k.end <= x.start or x.end <= k.start for k in kept):
            kept.append(x)
    return sorted(kept, key=lambda x: (x.start, x.end, x.target_id))
