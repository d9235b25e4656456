"""Redacts never-emit strings from model output, streamed or not."""

from __future__ import annotations

import re
from collections.abc import Iterable

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
# Between the word/digit groups of a redact string, tolerate a few separators so that
# "212-555-0187" is also caught as "212 555 0187" or "(212) 555.0187".
_SEP = r"[\W_]{0,3}"


def _pattern(secret: str) -> str | None:
    parts = _TOKEN.findall(secret)
    if not parts:
        return None
    return _SEP.join(re.escape(p) for p in parts)


class Redactor:
    """Replaces every occurrence of the given strings with a placeholder.

    Streaming-safe: `feed` holds back a tail long enough to contain a match that is still
    arriving, so a secret split across chunks is caught; `flush` releases the rest.

    Example:
        >>> r = Redactor(["212-555-0187"], "[redacted]")
        >>> r.feed("call 212-5") + r.feed("55-0187 now") + r.flush()
        'call [redacted] now'
    """

    def __init__(self, secrets: Iterable[str], placeholder: str) -> None:
        patterns = sorted({p for s in secrets if (p := _pattern(s))}, key=len, reverse=True)
        self._regex = re.compile("|".join(patterns), re.IGNORECASE) if patterns else None
        self._placeholder = placeholder
        longest = max((len(s) for s in secrets), default=0)
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
