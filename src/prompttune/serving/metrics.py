"""What `GET /metrics` reports, in Prometheus' text format (`prometheus-client`).

Each server has its own registry, so several servers in one process (tests) count apart.

    prompttune_requests_total{endpoint, code}        HTTP requests answered, by route and status
    prompttune_errors_total{code}                    responses with status ≥ 400, by status
    prompttune_request_latency_seconds{endpoint}     time from request to response (histogram)
    prompttune_batch_size                            texts per call of the task pool (histogram)
    prompttune_queue_depth                           texts admitted and not yet answered (gauge)
    prompttune_tasks                                 tasks loaded (gauge)

`endpoint` is the route's path template (`/v1/tasks/{task}/predict`), never the raw path, so an
unknown URL cannot add label values; a request that matches no route counts as `unmatched`.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """The server's counters, histograms and gauges, in a registry of their own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, *, queue_depth: Callable[[], int], tasks: Callable[[], int]):
        self.registry = CollectorRegistry()
        self.requests = Counter("prompttune_requests", "HTTP requests answered, by route and status code",
                                ["endpoint", "code"], registry=self.registry)
        self.errors = Counter("prompttune_errors", "HTTP responses with status >= 400, by status code", ["code"],
                              registry=self.registry)
        self.latency = Histogram("prompttune_request_latency_seconds", "seconds from request to response, by route",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("prompttune_batch_size", "texts per call of the task pool (one micro-batch)",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        Gauge("prompttune_queue_depth", "texts admitted and not yet answered (waiting or in the model)",
              registry=self.registry).set_function(queue_depth)
        Gauge("prompttune_tasks", "tasks loaded", registry=self.registry).set_function(tasks)

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if code >= 400:
            self.errors.labels(str(code)).inc()

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
