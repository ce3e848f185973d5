"""What a running service records: one JSON line per request (rotated by size) and Prometheus metrics."""

from __future__ import annotations

import json
import os
from contextlib import suppress
from pathlib import Path
from typing import Any

from recforge.serving.core import ServedModel

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RequestLog:
    """One JSON line per request, appended to ``path`` (line-buffered, so a reader sees complete lines).

    Rotated by size: once the file reaches ``max_bytes`` it becomes ``<path>.1`` (an older ``.1`` becomes
    ``.2``, and so on; ``backups`` old files are kept, 0 keeps none) and a new file is started."""

    def __init__(self, path: Path | None, max_bytes: int = 100 << 20, backups: int = 5) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._file = None
        self._size = 0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._open()

    def _open(self) -> None:
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")
        self._size = self._file.tell()  # a restarted service continues the file it left

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            line = json.dumps(record, separators=(",", ":"), default=str) + "\n"  # ASCII: one byte a character
            self._file.write(line)
            self._size += len(line)
            if self._size >= self.max_bytes:
                self._rotate()

    def _rotate(self) -> None:
        self._file.close()
        names = [self.path] + [self.path.with_name(f"{self.path.name}.{i}") for i in range(1, self.backups + 1)]
        with suppress(FileNotFoundError):  # someone removed a file meanwhile: nothing to keep
            names[-1].unlink()
        for newer, older in reversed(list(zip(names, names[1:]))):
            with suppress(FileNotFoundError):
                os.replace(newer, older)
        self._open()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Metrics:
    """Prometheus metrics in a registry of their own (several apps can live in one process, e.g. tests)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series: they double the exposition and nobody graphs them

        self.registry = CollectorRegistry()
        self.requests = Counter("recforge_requests_total", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("recforge_request_latency_seconds", "request latency in seconds by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.recommendations = Counter("recforge_recommendations_total", "successful /recommend responses",
                                       registry=self.registry)
        self.fallbacks = Counter("recforge_fallback_total", "successful /recommend responses for unknown users "
                                 "(popularity fallback)", registry=self.registry)
        self.fallback_rate = Gauge("recforge_fallback_rate", "fallback_total / recommendations_total",
                                   registry=self.registry)
        self.reloads = Counter("recforge_model_reloads_total", "model reloads by outcome", ["outcome"],
                               registry=self.registry)
        self.model_info = Gauge("recforge_model_info", "the served model (value 1)", ["model_id", "run_id"],
                                registry=self.registry)
        self._children: dict[tuple[str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}
        self._n_served = self._n_fallback = 0

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        counter = self._children.get(key)
        if counter is None:
            counter = self._children[key] = self.requests.labels(endpoint, str(status))
        counter.inc()
        histogram = self._latency_children.get(endpoint)
        if histogram is None:
            histogram = self._latency_children[endpoint] = self.latency.labels(endpoint)
        histogram.observe(seconds)

    def served(self, fallback: bool) -> None:
        self._n_served += 1
        self.recommendations.inc()
        if fallback:
            self._n_fallback += 1
            self.fallbacks.inc()
        self.fallback_rate.set(self._n_fallback / self._n_served)

    def set_model(self, served: ServedModel) -> None:
        self.model_info.clear()
        self.model_info.labels(served.ref.model_id, served.ref.run_id or "").set(1)
