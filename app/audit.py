"""Audit trail of the admin API: one record per admin request on the `lethe.audit` logger.

A record says who (a fingerprint of the bearer token, and the client address), what (the
action and target id) and how it ended (the HTTP status). It never carries request bodies:
target names, aliases, examples, descriptions and prompts stay out of the logs.
"""

from __future__ import annotations

import hashlib
import logging
import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.metrics import call_with_status, route_template

AUDIT_LOGGER = "lethe.audit"
ANONYMOUS = "anonymous"
# Routes under /admin and the action each one audits as; other admin routes (an adapter
# upload, say) are audited as "<METHOD> <route template>" until they are named here.
ACTIONS: dict[tuple[str, str], str] = {
    ("POST", "/admin/targets"): "target.create",
    ("GET", "/admin/targets"): "target.list",
    ("GET", "/admin/targets/{target_id}"): "target.get",
    ("DELETE", "/admin/targets/{target_id}"): "target.delete",
    ("POST", "/admin/classify"): "classify",
    ("GET", "/admin/interventions"): "interventions.list",
    ("POST", "/admin/targets/{target_id}/adapter"): "adapter.upload",
}
# Path text is the client's: only id-shaped values go into the trail.
_TARGET_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")
logger = logging.getLogger(AUDIT_LOGGER)


def token_fingerprint(authorization: str | None) -> str:
    """First 8 hex digits of the sha256 of the bearer token sent, or "anonymous".

    Enough to tell operators' tokens apart in the trail, useless for replaying one.

    Example:
        >>> token_fingerprint("Bearer secret")
        '2bb80d53'
        >>> token_fingerprint(None)
        'anonymous'
    """
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return ANONYMOUS
    return hashlib.sha256(token.encode()).hexdigest()[:8]


class AuditMiddleware:
    """Logs one audit record for every request under `prefix`, whatever its outcome
    (including refused credentials and validation errors).

    The target id comes from the path (`{target_id}`) or, for a creation, from
    `request.state.target_id`, which the route sets.
    """

    def __init__(self, app: ASGIApp, prefix: str = "/admin") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not (
            path == self.prefix or path.startswith(self.prefix + "/")
        ):
            await self.app(scope, receive, send)
            return
        await call_with_status(
            self.app, scope, receive, send, lambda status: self._record(scope, status)
        )

    @staticmethod
    def _record(scope: Scope, status: int) -> None:
        method = str(scope.get("method", ""))
        route = route_template(scope)
        action = ACTIONS.get((method, route), f"{method} {route}")
        path_params = scope.get("path_params") or {}
        state = scope.get("state") or {}
        target_id = path_params.get("target_id") or state.get("target_id")
        if target_id is not None and not _TARGET_ID.fullmatch(str(target_id)):
            target_id = "<invalid>"
        caller = token_fingerprint(Headers(scope=scope).get("authorization"))
        client = scope.get("client")
        client_ip = client[0] if client else None
        logger.info(
            "%s target=%s caller=%s ip=%s status=%d",
            action,
            target_id or "-",
            caller,
            client_ip or "-",
            status,
            extra={
                "audit": True,
                "action": action,
                "target_id": target_id,
                "caller": caller,
                "client_ip": client_ip,
                "status": status,
            },
        )
