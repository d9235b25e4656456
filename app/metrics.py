"""Prometheus metrics of one gateway app: collectors on a per-app registry, and the HTTP
middleware that counts requests by route template."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Generations run for seconds to minutes; the low buckets cover /health and admin reads.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
DETECTOR_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
UNMATCHED_ROUTE = "unmatched"  # every unknown path shares one label value
CLIENT_CLOSED = 499  # no response went out: the client left first
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class GatewayMetrics:
    """All metrics of one app, on a registry of its own (several apps may share a process).

    Example:
        >>> metrics = GatewayMetrics()
        >>> metrics.chat_requests.labels(action="none").inc()
        >>> b"lethe_chat_requests_total" in metrics.render()[0]
        True
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "lethe_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "lethe_http_request_duration_seconds",
            "Time from request start to the last response byte (whole stream for SSE).",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.completion_tokens = Counter(
            "lethe_completion_tokens",
            "Completion tokens served, as reported in responses' usage.",
            registry=r,
        )
        self.chat_requests = Counter(
            "lethe_chat_requests",
            "Chat requests accepted, by the action planned for them (none, eco, refuse, ...).",
            ["action"],
            registry=r,
        )
        self.answer_audit_reruns = Counter(
            "lethe_answer_audit_reruns",
            "Unflagged requests whose answer named a target and were re-run with the "
            "intervention, by its action.",
            ["action"],
            registry=r,
        )
        self.detector_latency = Histogram(
            "lethe_detector_inspect_duration_seconds",
            "Time the detector took to inspect one conversation.",
            buckets=DETECTOR_BUCKETS,
            registry=r,
        )
        self.engine_batch_size = Gauge(
            "lethe_engine_batch_size", "Rows being decoded now.", registry=r
        )
        self.engine_queue_depth = Gauge(
            "lethe_engine_queue_depth",
            "Requests waiting for a place in the batch.",
            registry=r,
        )
        self.registry_targets = Gauge(
            "lethe_registry_targets", "Targets live in this replica's registry.", registry=r
        )
        # Filled by the shared-registry and adapter work; exported now so dashboards exist.
        self.registry_version = Gauge(
            "lethe_registry_version",
            "Version of the registry this replica enforces.",
            registry=r,
        )
        self.propagation_lag = Gauge(
            "lethe_registry_propagation_lag_seconds",
            "Delay between a registry change and this replica enforcing it (last change).",
            registry=r,
        )
        self.registry_staleness = Gauge(
            "lethe_registry_staleness_seconds",
            "Seconds since this replica last knew it held every change of the shared registry.",
            registry=r,
        )
        self.adapter_jobs = Gauge(
            "lethe_adapter_jobs",
            "LoRA adapter jobs, by state.",
            ["state"],
            registry=r,
        )

    def watch(
        self,
        *,
        batch_size: Callable[[], float],
        queue_depth: Callable[[], float],
        registry_targets: Callable[[], float],
        adapter_states: Callable[[], list[str]] | None = None,
    ) -> None:
        """Read these gauges from live objects at scrape time (called once the app's
        services exist)."""
        self.engine_batch_size.set_function(batch_size)
        self.engine_queue_depth.set_function(queue_depth)
        self.registry_targets.set_function(registry_targets)
        if adapter_states is not None:
            states = adapter_states

            def counter(state: str) -> Callable[[], float]:
                return lambda: float(sum(s == state for s in states()))

            for state in ("training", "ready", "failed"):
                self.adapter_jobs.labels(state=state).set_function(counter(state))

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


async def call_with_status(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, record: Callable[[int], None]
) -> None:
    """Run `app` and hand `record` the response status once it is over: 500 when the app
    raised before answering, CLIENT_CLOSED when no response went out at all."""
    status: int | None = None

    async def send_wrapper(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        await send(message)

    try:
        await app(scope, receive, send_wrapper)
    except Exception:
        status = status or 500  # the error handler outside us answers 500
        raise
    finally:
        record(status or CLIENT_CLOSED)


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/admin/targets/{target_id}`), never the raw path,
    so label values stay few."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(template) if template else UNMATCHED_ROUTE


class MetricsMiddleware:
    """Counts every HTTP request by method, route template and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        def record(status: int) -> None:
            route = route_template(scope)
            method = scope.get("method", "")
            method = method if method in METHODS else "other"
            self.metrics.http_requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.http_latency.labels(method=method, route=route).observe(
                time.perf_counter() - started
            )

        await call_with_status(self.app, scope, receive, send, record)
