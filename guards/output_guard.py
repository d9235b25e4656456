"""Redacts never-emit strings from model output, streamed or not."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from guards.targets import Target
from guards.verdict import ChatTurn

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
# Between the word/digit groups of a redact string, tolerate a few separators so that
# "212-555-0187" is also caught as "212 555 0187" or "(212) 555.0187".
_SEP = r"[\W_]{0,3}"


def _pattern(secret: str) -> str | None:
    parts = _TOKEN.findall(secret)
    if not parts:
        return None
    return _SEP.join(re.escape(p) for p in parts)


def _word_pattern(name: str) -> str | None:
    """A name matched as whole words only: withholding "Jedi" must not touch "Jedidiah"."""
    inner = _pattern(name)
    return None if inner is None else rf"(?<!\w){inner}(?!\w)"


def withheld_names(targets: Iterable[Target], turns: Sequence[ChatTurn]) -> list[str]:
    """The names and aliases of matched targets that the conversation does not contain.

    An answer to an intervened request never says them: a model that had never learned the
    target could not, so a name surfacing anyway (a sampled answer the intervention did not
    hold back) is a leak. Names the user wrote stay: echoing the question is not a leak.
    """
    said = " ".join(t.content for t in turns).casefold()
    names = (a for t in targets for a in t.spec.all_aliases() if a.casefold() not in said)
    return list(dict.fromkeys(names))


class Redactor:
    """Replaces every occurrence of the given strings with a placeholder.

    Streaming-safe: `feed` holds back a tail long enough to contain a match that is still
    arriving, so a secret split across chunks is caught; `flush` releases the rest.

    `secrets` match anywhere; `words` (withheld names) only as whole words, and one character
    more is held back for them so the word boundary after a name is seen before it goes out.

    Example:
        >>> r = Redactor(["212-555-0187"], "[redacted]")
        >>> r.feed("call 212-5") + r.feed("55-0187 now") + r.flush()
        'call [redacted] now'
    """

    def __init__(self, secrets: Iterable[str], placeholder: str, words: Iterable[str] = ()) -> None:
        secrets, words = list(secrets), list(words)
        patterns = {p for s in secrets if (p := _pattern(s))}
        patterns |= {p for w in words if (p := _word_pattern(w))}
        ordered = sorted(patterns, key=len, reverse=True)
        self._regex = re.compile("|".join(ordered), re.IGNORECASE) if ordered else None
        self._placeholder = placeholder
        longest = max((len(s) for s in secrets), default=0)
        longest = max([longest, *(len(w) + 1 for w in words)])
        self._holdback = 3 * longest  # separators may stretch a match
        self._buffer = ""

    @property
    def active(self) -> bool:
        """False when there is nothing to redact."""
        return self._regex is not None

    def redact(self, text: str) -> str:
        """Redact a complete text."""
        if self._regex is None:
            return text
        return self._regex.sub(self._placeholder, text)

    def feed(self, delta: str) -> str:
        """Add streamed text; return what is safe to send now."""
        if self._regex is None:
            return delta
        self._buffer += delta  # raw text: a longer secret may still complete a shorter match
        cut = len(self._buffer) - self._holdback
        if cut <= 0:
            return ""
        out: list[str] = []
        pos = 0
        for match in self._regex.finditer(self._buffer):
            if match.start() >= cut:
                break
            if match.end() > cut:  # still arriving: keep it whole in the buffer
                cut = match.start()
                break
            out.append(self._buffer[pos : match.start()])
            out.append(self._placeholder)
            pos = match.end()
        cut = max(cut, pos)
        out.append(self._buffer[pos:cut])
        self._buffer = self._buffer[cut:]
        return "".join(out)

    def flush(self) -> str:
        """Release the held-back tail."""
        out, self._buffer = self.redact(self._buffer), ""
        return out
