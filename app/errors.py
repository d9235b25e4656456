"""Error types of the gateway and the handlers that render them in OpenAI's error shape."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from guards.store import StoreUnavailable

logger = logging.getLogger(__name__)


class LetheError(Exception):
    """An error with an HTTP status and OpenAI error fields."""

    status_code = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class BadRequest(LetheError):
    """A parameter has a value the gateway cannot serve."""


class ContextLengthExceeded(LetheError):
    """Prompt plus requested tokens do not fit the model's context window."""

    code = "context_length_exceeded"


class Unprocessable(LetheError):
    """422: well-formed, but it does not fit (an adapter for another model, say)."""

    status_code = 422


class NotFound(LetheError):
    """Unknown model, target or route."""

    status_code = 404
    code = "not_found"


class Unauthorized(LetheError):
    """Missing or wrong credentials."""

    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(LetheError):
    """The caller may not use this API (e.g. the admin API is disabled)."""

    status_code = 403
    type = "permission_error"
    code = "forbidden"


class Overloaded(LetheError):
    """The waiting queue is full; the client should retry later."""

    status_code = 429
    type = "rate_limit_error"
    code = "overloaded"
    retry_after_s = 1


class RateLimited(Overloaded):
    """This client used up its rate limit (LETHE_RATE_LIMIT_RPM); retry after a while."""

    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(LetheError):
    """The gateway cannot take this request now."""

    status_code = 503
    type = "server_error"
    code = "unavailable"


def error_payload(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, dict[str, str | None]]:
    """OpenAI's error envelope."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _status_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    # Built from exc.errors(), never str(exc): that one can leak internals.
    parts = []
    first_param: str | None = None
    for err in exc.errors()[:10]:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc) or "body"
        first_param = first_param or (where if loc else None)
        parts.append(f"{where}: {err.get('msg', 'invalid value')}")
    return "; ".join(parts) or "invalid request body", first_param


def install_error_handlers(app: FastAPI) -> None:
    """Render every error, ours or the framework's, in one shape."""

    @app.exception_handler(LetheError)
    async def _lethe(_: Request, exc: LetheError) -> JSONResponse:
        headers: dict[str, str] | None = None
        if exc.status_code == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        elif isinstance(exc, Overloaded):
            headers = {"Retry-After": str(exc.retry_after_s)}
        return JSONResponse(
            error_payload(exc.message, exc.type, exc.param, exc.code),
            status_code=exc.status_code,
            headers=headers,
        )

    @app.exception_handler(StoreUnavailable)
    async def _registry_unreachable(_: Request, exc: StoreUnavailable) -> JSONResponse:
        # The detail names hosts: logged, not sent. Writes are atomic, so nothing was changed.
        logger.warning("registry write refused: %s", exc)
        return JSONResponse(
            error_payload(
                "the target registry is unreachable, so nothing was changed; retry once "
                "/health reports status ok",
                "server_error",
                None,
                "registry_unavailable",
            ),
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(
            error_payload(message, "invalid_request_error", param, "invalid_schema"),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        message = str(exc.detail) if exc.detail else "error"
        if exc.status_code == 404:
            message = "unknown route"
        elif exc.status_code == 405:
            message = "method not allowed on this route"
        return JSONResponse(
            error_payload(message, _status_type(exc.status_code), None, code),
            status_code=exc.status_code,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Runs outside the request-id middleware: take the id from request.state.
        request_id: str | None = getattr(request.state, "request_id", None)
        logger.exception("unhandled error", extra={"request_id": request_id})
        return JSONResponse(
            error_payload("internal error", "server_error", None, "internal_error"),
            status_code=500,
            headers={"X-Request-ID": request_id} if request_id else None,
        )
