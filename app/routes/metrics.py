"""Public Prometheus scrape route (optionally behind LETHE_METRICS_TOKEN)."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request, Response

from app.errors import Unauthorized
from app.metrics import GatewayMetrics
from app.settings import Settings

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus exposition of this replica's metrics."""
    settings: Settings = request.app.state.settings
    token = settings.metrics_token
    if token is not None and token.get_secret_value():
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            given.strip().encode(), token.get_secret_value().encode()
        ):
            raise Unauthorized("/metrics needs 'Authorization: Bearer <LETHE_METRICS_TOKEN>'")
    gateway_metrics: GatewayMetrics = request.app.state.metrics
    body, content_type = gateway_metrics.render()
    return Response(content=body, media_type=content_type)
