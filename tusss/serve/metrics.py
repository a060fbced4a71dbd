"""The Prometheus metrics of the HTTP services (``tusss serve`` and the Ray Serve deployment)."""

from __future__ import annotations

__all__ = ["ServiceMetrics"]


class ServiceMetrics:
    """prometheus_client metrics in a registry of their own (one per app): request counts by endpoint and status,
    request / stage / queue-wait latency histograms, batch sizes, queue depth and readiness."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        lat = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.requests = Counter("tusss_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("tusss_request_seconds", "end-to-end request latency", ["endpoint"], buckets=lat,
                                 registry=self.registry)
        self.stage = Histogram("tusss_stage_seconds", "model stage time per batch", ["stage"], buckets=lat,
                               registry=self.registry)
        self.queue_wait = Histogram("tusss_queue_wait_seconds", "time a request waited for its batch", buckets=lat,
                                    registry=self.registry)
        self.batch = Histogram("tusss_batch_size", "requests per heavy-stage batch",
                               buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64), registry=self.registry)
        self.queue = Gauge("tusss_queue_depth", "requests waiting for the model", registry=self.registry)
        self.ready = Gauge("tusss_ready", "1 when models are loaded and warmed up", registry=self.registry)
