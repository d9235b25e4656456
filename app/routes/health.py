"""Public liveness/readiness route."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from app.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(services: ServicesDep) -> dict[str, Any]:
    """Status of the gateway, its model and its registry."""
    return {
        "status": "ok",
        "model": services.chat.model_name,
        "targets": len(services.registry),
        "index_vectors": len(services.registry.index),
        "queue_depth": services.engine.queue_depth,
        "batch_size": services.engine.batch_size,
        "uptime_s": round(time.time() - services.started_at, 1),
    }
