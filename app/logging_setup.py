"""Process logging: JSON or text lines on stderr, each stamped with the current request id."""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

# The id of the request being handled in this task (and the worker threads it starts:
# anyio copies the context into them), or None outside a request.
_request_id: ContextVar[str | None] = ContextVar("lethe_request_id", default=None)

# A client's X-Request-ID is kept only when it is short and plain, so it cannot forge log
# lines or smuggle markup into them.
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")

# LogRecord attributes that are not `extra=` fields; uvicorn's color_message duplicates msg.
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "color_message",
    "taskName",
}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def current_request_id() -> str | None:
    """The id of the request this code runs for, if any."""
    return _request_id.get()


def set_request_id(request_id: str | None) -> object:
    """Make `request_id` current; returns a token for `reset_request_id`."""
    return _request_id.set(request_id)


def reset_request_id(token: object) -> None:
    """Restore the request id that was current before `set_request_id`."""
    _request_id.reset(token)  # type: ignore[arg-type]


def request_id_from(header: str | None) -> str:
    """The client's X-Request-ID when it is sane, else a fresh random id.

    Example:
        >>> request_id_from("abc-123")
        'abc-123'
        >>> len(request_id_from("bad id\\n"))
        32
    """
    if header is not None and _SANE_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Stamps `record.request_id` with the current request id (None outside a request).

    Attached to the handler, so it runs in the thread that logged, where the id is current.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or current_request_id(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The human format; `-` stands for "no request"."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        request_id = getattr(record, "request_id", None) or current_request_id() or "-"
        return TEXT_FORMAT % {**vars(record), "request_id": request_id}


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever `sys.stderr` is at emit time (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def configure_logging(
    log_format: Literal["json", "text"] = "json", level: str | int = "INFO"
) -> logging.Handler:
    """Send every logger's records to stderr in `log_format`; idempotent.

    Replaces the handler an earlier call installed and leaves other handlers (a test runner's
    capture, say) alone. uvicorn's loggers propagate here when it runs with `log_config=None`.

    Example:
        >>> handler = configure_logging("text", "WARNING")  # doctest: +SKIP
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_lethe", False)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler._lethe = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv = logging.getLogger(name)
        uv.handlers.clear()
        uv.propagate = True
    return handler
