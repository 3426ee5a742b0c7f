"""The Prometheus metrics (the access log and the middleware that feeds both are access_log.py).

Each app owns its `CollectorRegistry`, so several apps (tests, embedding) never clash over
metric names in the process-wide default registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


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
