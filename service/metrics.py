"""Observability: Prometheus metrics and the one log line per request.

Each app owns its `CollectorRegistry`, so several apps (tests, embedding) never clash over
metric names in the process-wide default registry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .schemas import error_content

access_log = logging.getLogger("spa_service.access")
log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
# Nginx's code for "client closed the request": no response was sent, so no real status exists.
CLIENT_CLOSED = 499
# Probes and scrapes arrive every few seconds: their successes are logged at DEBUG only.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


def _batch_buckets(max_batch_size: int) -> list[float]:
    sizes = {1, max_batch_size}
    size = 2
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    return sorted(float(s) for s in sizes)


class Metrics:
    """The service's metrics, registered in a registry of their own."""

    def __init__(self, *, max_batch_size: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "spa_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.in_progress = Gauge(
            "spa_requests_in_progress", "HTTP requests begun and not yet answered, by route", ["route"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "spa_request_duration_seconds", "HTTP request latency", ["route"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "spa_stage_duration_seconds",
            "Time each image spent in each stage (decode, queue, ...; model stages: its whole batch), by model",
            ["model", "stage"],
            buckets=STAGE_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "spa_batch_size", "Images per backbone call, by model", ["model"], buckets=_batch_buckets(max_batch_size),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "spa_batch_duration_seconds", "Wall time of one localize call (whole batch), by model", ["model"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.queue_depth = Gauge(
            "spa_queue_depth", "Images waiting for the backbone, by model", ["model"], registry=self.registry
        )
        self.images = Counter("spa_images_processed", "Images localized, by model", ["model"], registry=self.registry)
        self.images_dropped = Counter(
            "spa_images_dropped",
            "Images whose client hung up before they were answered; their remaining work was skipped, by model",
            ["model"], registry=self.registry,
        )
        self.ready = Gauge(
            "spa_ready", "1 when the model is loaded and warmed up, by model", ["model"], registry=self.registry
        )

    def track_queue(self, model: str, depth: Callable[[], int]) -> None:
        """Read the queue depth when scraped, so it is never stale."""
        self.queue_depth.labels(model).set_function(depth)

    def observe_batch(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.batch_seconds.labels(model).observe(seconds)
        self.images.labels(model).inc(size)

    def observe_stages(self, model: str, timings_ms: Mapping[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.stage_seconds.labels(model, stage).observe(ms / 1000.0)

    def exposition(self) -> tuple[bytes, str]:
        """The text format body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def route_label(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The route template (`/v1/localize`), never the raw path: labels must stay few. Requests
    refused before routing (401, 413) are matched here."""
    route = scope.get("route")
    if route is None:
        matches = {r.matches(scope)[0]: r for r in reversed(routes)}  # the first route of each kind wins
        route = matches.get(Match.FULL) or matches.get(Match.PARTIAL)  # PARTIAL: path known, method not
    return getattr(route, "path", None) or "unmatched"


class ObserveRequests:
    """Outermost middleware: counts and times every request, logs one line for it, and turns an
    unexpected exception into a logged 500 `internal_error` (the error handlers answer the rest).

    Routes add `image_size`, `images` and `batch_size` to `request.state` for the log line.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        status = CLIENT_CLOSED
        in_progress = self.metrics.in_progress.labels(route_label(scope, self.routes))
        in_progress.inc()

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except ClientDisconnect:
            pass
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if status == CLIENT_CLOSED:
                status = 500
                response = JSONResponse(error_content("internal_error", "internal server error"), status_code=500)
                await response(scope, receive, send)
        finally:
            in_progress.dec()
            self._record(scope, state, status, time.perf_counter() - started)

    def _record(self, scope: Scope, state: Mapping[str, object], status: int, seconds: float) -> None:
        route = route_label(scope, self.routes)
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.request_seconds.labels(route).observe(seconds)
        fields = {
            "route": route,
            "method": scope["method"],
            "status": status,
            "latency_ms": round(seconds * 1000.0, 1),
            "image_size": state.get("image_size"),
            "images": state.get("images"),
            "batch_size": state.get("batch_size"),
        }
        level = logging.DEBUG if route in QUIET_ROUTES and status < 400 else logging.INFO
        access_log.log(
            level, " ".join(f"{key}={_format(value)}" for key, value in fields.items() if value is not None),
            extra=fields,
        )


def _format(value: object) -> str:
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return str(value)
