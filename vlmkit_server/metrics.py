"""The server's Prometheus metrics (``GET /metrics``), in a registry of their own per app."""

from __future__ import annotations

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("vlmkit_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram(
            "vlmkit_request_seconds", "request latency", ["endpoint"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.batch_size = Histogram(
            "vlmkit_batch_size", "items per model call", ["model", "task"], registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64)
        )
        self.queue = Gauge("vlmkit_queue_depth", "requests waiting", ["model", "task"], registry=self.registry)

    def batch(self, model: str, task: str, size: int) -> None:
        self.batch_size.labels(model, task).observe(size)
