"""Prometheus metrics of one st-serve process: requests, latency, tokens, batch sizes and queue depth, per model and
endpoint. Each app has its own registry, so several apps (tests) never collide."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)


class Metrics:
    """The counters and histograms st-serve exports at /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("st_serve_requests", "Requests answered, by model, endpoint and status code.",
                                ["model", "endpoint", "status"], registry=r)
        self.latency = Histogram("st_serve_request_duration_seconds", "Time from request to response.",
                                 ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("st_serve_input_tokens", "Input tokens (after truncation, special tokens included).",
                              ["model", "endpoint"], registry=r)
        self.in_progress = Gauge("st_serve_requests_in_progress", "Requests received and not yet answered.",
                                 ["endpoint"], registry=r)
        self.batch_size = Histogram("st_serve_batch_size", "Inputs per graph run (merged across requests).",
                                    ["model"], buckets=SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram("st_serve_batch_padded_tokens", "Padded tokens per graph run (inputs x longest).",
                                      ["model"], buckets=TOKEN_BUCKETS, registry=r)
        self.batch_seconds = Histogram("st_serve_batch_duration_seconds", "Time of one graph run.", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("st_serve_queue_depth", "Inputs waiting for a batch.", ["model"], registry=r)

    def batch_hook(self, model: str) -> Callable[[int, int, float], None]:
        """The batcher's on_batch callback for `model`."""
        size, tokens, seconds = (self.batch_size.labels(model), self.batch_tokens.labels(model),
                                 self.batch_seconds.labels(model))

        def on_batch(n: int, padded: int, elapsed: float) -> None:
            size.observe(n)
            tokens.observe(padded)
            seconds.observe(elapsed)

        return on_batch

    def watch_queue(self, model: str, depth: Callable[[], int]) -> None:
        """Report `depth()` as the model's queue depth at every scrape."""
        self.queue_depth.labels(model).set_function(depth)
