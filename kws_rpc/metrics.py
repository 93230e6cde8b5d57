"""Prometheus metrics of the server, in a registry of their own so several servers can live in one
process (tests) without clashing in prometheus_client's global registry."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The server's counters; ``call`` times one RPC and records its final status code."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("kws_requests", "RPCs answered, by method and gRPC status code",
                                ["method", "code"], registry=self.registry)
        self.errors = Counter("kws_errors", "RPCs that failed, by method and domain error type",
                              ["method", "error"], registry=self.registry)
        self.latency = Histogram("kws_request_latency_seconds", "Time from request to answer, by method",
                                 ["method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("kws_batch_size", "Rows per model invocation of the micro-batcher",
                                    ["model"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.ready = Gauge("kws_ready", "1 once models are loaded and the server is serving",
                           registry=self.registry)
        self._http: Any = None
        self._http_thread: threading.Thread | None = None

    def observe_batch(self, model: str, rows: int) -> None:
        self.batch_size.labels(model).observe(rows)

    @contextlib.contextmanager
    def call(self, method: str) -> Iterator["CallRecord"]:
        record = CallRecord()
        start = time.perf_counter()
        try:
            yield record
        finally:
            self.latency.labels(method).observe(time.perf_counter() - start)
            self.requests.labels(method, record.code).inc()
            if record.error:
                self.errors.labels(method, record.error).inc()

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics HTTP endpoint; returns its port (port 0 = the OS picks one)."""
        self._http, self._http_thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class CallRecord:
    """What the servicer learnt about one call: its status code and, on failure, the error type."""

    def __init__(self) -> None:
        self.code = "OK"
        self.error = ""

    def fail(self, code: str, error: str) -> None:
        self.code, self.error = code, error
