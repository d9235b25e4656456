"""Process wiring of the shared registry: the sync thread, the engine's interventions for changes
made on other replicas, replication metrics, and the staleness checks of /health and chat."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request

from adapters.engine import Engine
from adapters.lora import LoraWeights
from app.adapter_jobs import LORA_ARTIFACT
from app.deps import get_services
from app.errors import Unavailable
from app.metrics import GatewayMetrics
from app.settings import Settings
from app.steering_calibration import STEERING_ARTIFACT
from guards.redis_store import RedisTargetStore
from guards.registry import Registry, RegistryEvent, RegistryListener
from guards.sync import RegistrySync

logger = logging.getLogger(__name__)


def start_sync(
    registry: Registry, store: RedisTargetStore, settings: Settings, metrics: GatewayMetrics
) -> RegistrySync:
    """Load the shared registry into `registry` (blocking) and fill the replication metrics;
    the caller starts the sync thread once its listeners are in place (`intervention_listener`)."""
    # An idle replica confirms it is in sync once per blocking read: a few per staleness bound.
    block_ms = int(min(1000.0, max(50.0, settings.max_staleness_s * 250)))
    sync = RegistrySync(registry, store, block_ms=block_ms, on_lag=metrics.propagation_lag.set)
    sync.load()
    metrics.registry_version.set_function(lambda: float(sync.version))
    metrics.registry_staleness.set_function(sync.staleness_s)
    return sync


def load_artifact(
    registry: Registry, engine: Engine, settings: Settings, target_id: str, kind: str
) -> None:
    """Load one stored artifact of a target into the engine's intervention bank."""
    from adapters.steering import SteeringVectors

    data = registry.artifact(target_id, kind)
    if data is None:
        return
    if kind == STEERING_ARTIFACT:
        engine.bank.put_steering(target_id, SteeringVectors.from_bytes(data))
    elif kind == LORA_ARTIFACT:
        weights = LoraWeights.from_bytes(data, engine.loaded.model, settings.max_lora_rank)
        engine.bank.put_lora(target_id, weights)
    else:
        logger.debug("artifact %s of %s is not an intervention", kind, target_id)


def intervention_listener(
    registry: Registry, engine: Engine, settings: Settings
) -> RegistryListener:
    """Keeps the engine's bank in step with changes from other replicas: a stored steering
    vector or adapter is loaded, a deleted target's are dropped."""

    def on_change(event: RegistryEvent) -> None:
        if event.kind == "remove":
            engine.bank.remove(event.target_id)
        elif event.kind == "artifact" and event.artifact:
            load_artifact(registry, engine, settings, event.target_id, event.artifact)

    return on_change


def registry_health(sync: RegistrySync | None, settings: Settings) -> dict[str, Any]:
    """The registry part of /health: replication state, and whether it degrades the replica."""
    if sync is None:
        return {"shared": False, "degraded": False}
    status = sync.status()
    degraded = (
        not status.connected
        or status.staleness_s > settings.max_staleness_s
        or status.reset is not None
    )
    return {
        "shared": True,
        "degraded": degraded,
        "replica": status.replica,
        "connected": status.connected,
        "version": status.version,
        "staleness_s": status.staleness_s,
        "resyncs": status.resyncs,
        "error": status.reset or status.last_error,
    }


def require_fresh_registry(request: Request) -> None:
    """With LETHE_FAIL_CLOSED, refuse chat requests while the registry copy is too stale."""
    services = get_services(request)
    settings = services.settings
    sync = services.sync
    if not settings.fail_closed or sync is None:
        return
    staleness = sync.staleness_s()
    if staleness > settings.max_staleness_s:
        raise Unavailable(
            f"this replica cannot confirm that its target registry is current (last in sync "
            f"{staleness:.0f} s ago): requests are refused until the registry is reachable again"
        )
