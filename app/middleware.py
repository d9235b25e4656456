"""HTTP layers around every request: request ids, the body size limit, and the function that
stacks them with metrics, audit and CORS."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.audit import AuditMiddleware
from app.errors import error_payload
from app.logging_setup import request_id_from, reset_request_id, set_request_id
from app.metrics import GatewayMetrics, MetricsMiddleware
from app.settings import Settings

REQUEST_ID_HEADER = "X-Request-ID"
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})


class RequestContextMiddleware:
    """Gives each request an id (the client's sane X-Request-ID, else a new one), makes it
    current for logging while the request is handled, and echoes it in the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(Headers(scope=scope).get(REQUEST_ID_HEADER))
        # Also on request.state: the 500 handler runs outside this middleware.
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        token = set_request_id(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            reset_request_id(token)


class BodySizeLimitMiddleware:
    """Answers 413 (OpenAI error shape) to a body over `max_bytes`.

    A declared Content-Length over the limit is refused before reading anything; a chunked
    body is read up to the limit and refused as soon as it passes it. Accepted bodies are
    replayed to the app unchanged, and later `receive` calls (disconnect detection) pass
    through. Adapter uploads (`/admin/.../adapter`) have their own, larger limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, upload_max_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_max_bytes = upload_max_bytes or max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        upload = path.startswith("/admin/") and path.endswith("/adapter")
        limit = self.upload_max_bytes if upload else self.max_bytes
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit():
            if int(length) > limit:
                await self._refuse(scope, receive, send, limit)
                return
            if int(length) == 0:
                await self.app(scope, receive, send)
                return
        elif scope.get("method") in _BODYLESS and "transfer-encoding" not in headers:
            await self.app(scope, receive, send)
            return

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left mid-upload: nobody to answer
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(scope, receive, send, limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = JSONResponse(
            error_payload(
                f"the request body exceeds {limit} bytes",
                "invalid_request_error",
                None,
                "request_too_large",
            ),
            status_code=413,
            # The rest of the upload is not read: the connection cannot be reused.
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def install_middleware(app: FastAPI, settings: Settings, gateway_metrics: GatewayMetrics) -> None:
    """The HTTP layers every request crosses, outermost first: request id, metrics, admin
    audit, CORS (only with LETHE_CORS_ORIGINS), body size limit."""
    # add_middleware puts each layer outside the ones added before it.
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        upload_max_bytes=settings.max_adapter_bytes,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(AuditMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=gateway_metrics)
    app.add_middleware(RequestContextMiddleware)
