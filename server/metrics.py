"""Prometheus metrics: request counts and latency histograms per FHIR interaction.

With several worker processes, prometheus-client's multiprocess mode aggregates the workers'
values (``PROMETHEUS_MULTIPROC_DIR``, set by ``consilium serve`` before any worker starts).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("consilium_http_requests", "HTTP requests on the FHIR face",
                                ["interaction", "status"], registry=self.registry)
        self.latency = Histogram("consilium_http_request_duration_seconds",
                                 "Time to serve a FHIR request", ["interaction"],
                                 buckets=_BUCKETS, registry=self.registry)
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe(self, interaction: str, status: int, seconds: float) -> None:
        key = (interaction, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(interaction, str(status)),
                        self.latency.labels(interaction))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> tuple[bytes, str]:
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
