"""Prometheus metrics of the server (``GET /metrics``) and its one log line per request.

Each app has its own registry, so several servers in one process (tests) do not share counts. With
``--workers N`` the worker processes write their values to ``PROMETHEUS_MULTIPROC_DIR`` (set by the
command before the workers start) and ``/metrics`` adds them up across workers.
"""
from __future__ import annotations

import logging
import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

log = logging.getLogger("classifier.serve")


class ServerMetrics:
    """Requests (by method, route, status), errors, latency, in-flight requests and model-call batch sizes."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("classifier_requests", "HTTP requests answered", ["method", "route", "status"],
                                registry=r)
        self.errors = Counter("classifier_request_errors", "HTTP requests answered with a 4xx or 5xx status",
                              ["route", "status"], registry=r)
        self.latency = Histogram("classifier_request_duration_seconds", "Time from request to response",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("classifier_requests_in_flight", "Requests being handled",
                               registry=r, multiprocess_mode="livesum")
        self.batch_size = Histogram("classifier_batch_size", "Items (images or tensor rows) per model call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.images = Counter("classifier_images", "Images or tensor rows predicted", ["endpoint"], registry=r)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, str(status)).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text format of every metric (summed over worker processes when there are several)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess  # only in multi-worker mode

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def log_request(method: str, path: str, status: int, ms: float) -> None:
    log.info("%s %s %d %.1f ms", method, path, status, ms)


def configure_logging(level: int = logging.INFO) -> None:
    """One line per request on stderr: ``time pid METHOD PATH STATUS MS``."""
    if log.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
