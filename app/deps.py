"""Typed FastAPI dependencies: services kept on app.state, and admin auth."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from adapters.engine import Engine
from app.adapter_jobs import AdapterTrainer
from app.calibrator import TargetCalibrator
from app.chat import ChatService
from app.errors import Forbidden, Unauthorized
from app.metrics import GatewayMetrics
from app.settings import Settings
from guards.detector import Detector
from guards.registry import Registry
from guards.sync import RegistrySync


@dataclass
class Services:
    """Everything the lifespan builds; one instance per app."""

    settings: Settings
    engine: Engine
    registry: Registry
    detector: Detector
    chat: ChatService
    calibrator: TargetCalibrator
    adapters: AdapterTrainer
    started_at: float
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)  # the app's, from create_app
    sync: RegistrySync | None = None  # follows the shared registry (Redis); None for SQLite


def get_services(request: Request) -> Services:
    """The app's services."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def require_admin(request: Request) -> None:
    """Bearer-token check for /admin; with no token configured the admin API is disabled."""
    services = get_services(request)
    token = services.settings.admin_token
    if token is None or not token.get_secret_value():
        raise Forbidden("the admin API is disabled: set LETHE_ADMIN_TOKEN to enable it")
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <admin token>'")
    if not secrets.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        raise Unauthorized("invalid admin token")
