"""Public liveness/readiness route."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from app.deps import ServicesDep
from app.replication import registry_health

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(services: ServicesDep) -> dict[str, Any]:
    """Status of the gateway, its model and its registry ("degraded" while a shared registry is
    unreachable or stale: the replica then enforces the last registry it had)."""
    registry = registry_health(services.sync, services.settings)
    return {
        "status": "degraded" if registry["degraded"] else "ok",
        "model": services.chat.model_name,
        "targets": len(services.registry),
        "index_vectors": len(services.registry.index),
        "queue_depth": services.engine.queue_depth,
        "batch_size": services.engine.batch_size,
        "uptime_s": round(time.time() - services.started_at, 1),
        "registry": registry,
    }
