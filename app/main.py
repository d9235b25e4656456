"""App factory and lifespan: builds the model, embedder, registry and engine once per app."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
import torch
from fastapi import Depends, FastAPI

from adapters.engine import Engine
from adapters.model import load_model
from app.adapter_jobs import AdapterTrainer, load_interventions
from app.calibrator import TargetCalibrator
from app.chat import ChatService
from app.deps import Services, require_admin
from app.errors import install_error_handlers
from app.intervention_stores import SharedInterventionLog, SqliteInterventionLog
from app.interventions import InterventionLog, InterventionRecorder
from app.limits import ClientGuard, require_client
from app.logging_setup import configure_logging
from app.metrics import GatewayMetrics
from app.middleware import install_middleware
from app.replication import intervention_listener, start_sync
from app.routes import admin, health, metrics, openai
from app.settings import Settings
from guards.calibration import BenignCorpus, ThresholdConfig, load_benign_prompts
from guards.crosslingual import CrossLingualChannel
from guards.detector import Detector
from guards.embedder import Embedder, load_embedder
from guards.index import FaissVectorIndex
from guards.onnx_embedder import open_embedder
from guards.redis_store import RedisTargetStore
from guards.registry import Registry
from guards.store import SqliteTargetStore, TargetStore, open_store
from guards.targets import CalibrationState

logger = logging.getLogger(__name__)


def intervention_recorder(settings: Settings, store: TargetStore) -> InterventionRecorder:
    """Where intervened requests are recorded: Redis when replicas share the registry there
    (any replica then answers for all), else a SQLite file beside the registry's
    (`<registry>.interventions.db`), so the record survives a restart."""
    size = settings.intervention_log_size
    if size <= 0:
        return InterventionLog(0)  # off
    if isinstance(store, RedisTargetStore):
        client = RedisTargetStore.client_for(settings.resolved_registry_url())
        return SharedInterventionLog(client, size)
    if isinstance(store, SqliteTargetStore):
        return SqliteInterventionLog(store.path.with_suffix(".interventions.db"), size)
    return InterventionLog(size)


def detector_embedder(settings: Settings) -> Embedder:
    """The detector's main embedder, on the configured backend."""
    return open_embedder(
        settings.embedder, settings.embedder_backend, settings.embedder_int8, settings.cache_dir
    )


def crosslingual_channel(
    settings: Settings, thresholds: ThresholdConfig
) -> CrossLingualChannel | None:
    """The detector's channel for windows in other languages, unless turned off."""
    if not settings.crosslingual_embedder:
        return None
    embedder = load_embedder(settings.crosslingual_embedder)
    corpus = BenignCorpus(
        load_benign_prompts(), embedder, settings.detector_window_words, settings.cache_dir
    )
    return CrossLingualChannel(
        embedder, corpus, replace(thresholds, floor=settings.crosslingual_min_threshold)
    )


def build_services(settings: Settings, metrics: GatewayMetrics | None = None) -> Services:
    """Load everything heavy (blocking: call from a worker thread)."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    store = open_store(settings.resolved_registry_url(), create=settings.registry_create)
    embedder = detector_embedder(settings)
    corpus = BenignCorpus(
        load_benign_prompts(), embedder, settings.detector_window_words, settings.cache_dir
    )
    thresholds = settings.threshold_config()
    registry = Registry(
        store,
        embedder,
        corpus,
        thresholds,
        default_sigma=settings.eco_default_sigma,
        index=FaissVectorIndex(
            embedder.dim, exact_max=settings.index_exact_max_vectors, nprobe=settings.index_nprobe
        ),
        crosslingual=crosslingual_channel(settings, thresholds),
    )
    metrics = metrics or GatewayMetrics()
    # A shared registry is loaded from Redis and then followed (app/replication.py).
    sync = None
    if isinstance(store, RedisTargetStore):
        sync = start_sync(registry, store, settings, metrics)
    if sync is None:
        registry.load()
    loaded = load_model(settings.model, settings.cache_dir, settings.device, settings.model_name)
    engine = Engine(loaded, max_batch=settings.max_batch, max_queue=settings.max_queue)
    detector = Detector(
        registry,
        settings.detector_window_words,
        fact_bonus=settings.detector_fact_bonus,
        min_confidence=settings.lora_min_scale,
    )
    adapters = AdapterTrainer(engine, registry, settings)
    interventions = intervention_recorder(settings, store)
    load_interventions(registry, engine, settings, resubmit=adapters.submit)
    if sync is not None:
        registry.add_listener(intervention_listener(registry, engine, settings))
        sync.start()
    return Services(
        settings=settings,
        engine=engine,
        registry=registry,
        detector=detector,
        chat=ChatService(engine, detector, registry, settings, metrics, interventions),
        calibrator=TargetCalibrator(engine, registry, detector, settings, adapters),
        adapters=adapters,
        started_at=time.time(),
        metrics=metrics,
        sync=sync,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway as an ASGI app."""
    settings = settings or Settings()
    configure_logging(settings.log_format, settings.log_level)
    gateway_metrics = GatewayMetrics()  # per app: several apps may share a process

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await anyio.to_thread.run_sync(build_services, settings, gateway_metrics)
        app.state.services = services
        # What start-up built (model, corpus, the registry's targets and matcher) lives as long
        # as the process: keep it out of the collector's full passes, which took 0.5 s over a
        # 20,000-target registry (bench/registry.py), a stall for every request in flight.
        gc.freeze()
        gateway_metrics.watch(
            batch_size=lambda: services.engine.batch_size,
            queue_depth=lambda: services.engine.queue_depth,
            registry_targets=lambda: len(services.registry),
            adapter_states=lambda: [
                t.calibration.adapter.state.value for t in services.registry.list()
            ],
        )
        services.calibrator.start(settings.calibration_workers)
        services.adapters.start()
        for target in services.registry.list():
            if target.calibration.state != CalibrationState.DONE:
                services.calibrator.submit(target.id)  # interrupted by a restart
        logger.info("gateway ready: model %s", services.chat.model_name)
        try:
            yield
        finally:
            await services.calibrator.stop()
            await services.adapters.stop()
            services.engine.close()
            services.chat.interventions.close()
            if services.sync is not None:
                services.sync.stop()
            services.registry.store.close()

    app = FastAPI(title="Lethe", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = gateway_metrics
    app.state.client_guard = ClientGuard.from_settings(settings)
    install_error_handlers(app)
    install_middleware(app, settings, gateway_metrics)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(openai.router, dependencies=[Depends(require_client)])
    app.include_router(admin.router, dependencies=[Depends(require_admin)])
    return app
