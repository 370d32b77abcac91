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
        # With --engine ray: what each replica served, and how many replicas are in each state.
        self.replica_items = Counter("vlmkit_replica_items", "items (captions, answers, embeddings) served, by replica",
                                     ["model", "replica"], registry=self.registry)
        self.replica_batch = Histogram(
            "vlmkit_replica_batch_size", "size of the replica batch each item ran in", ["model", "replica"],
            registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.replicas = Gauge("vlmkit_replicas", "replicas of the model's deployment, by state", ["model", "state"],
                              registry=self.registry)

    def batch(self, model: str, task: str, size: int) -> None:
        self.batch_size.labels(model, task).observe(size)

    def replica_item(self, model: str, replica: str, batch: int) -> None:
        self.replica_items.labels(model, replica).inc()
        self.replica_batch.labels(model, replica).observe(batch)
