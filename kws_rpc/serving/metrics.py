"""Prometheus metrics of the server, in a registry of their own so several servers can live in one
process (tests) without clashing in prometheus_client's global registry."""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

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

    def refused(self, method: str, code: str, error: str) -> None:
        """A call refused before it reached its handler (auth, rate limit, stream cap, idle stream)."""
        self.requests.labels(method, code).inc()
        self.errors.labels(method, error).inc()

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

    def serve(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
              wrap: Callable[[Any], Any] | None = None) -> int:
        """Starts the /metrics HTTP endpoint (HTTPS with ``ssl_context``; ``wrap`` wraps the WSGI app, e.g.
        with an auth check); returns its port (port 0 = the OS picks one)."""
        server_class = type("MetricsServer", (_MetricsServer,),
                            {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
        app = make_wsgi_app(self.registry)
        self._http = make_server(host.strip("[]"), port, wrap(app) if wrap else app, server_class,
                                 handler_class=_QuietHandler)
        if ssl_context is not None:  # the handshake runs in the request's thread, not in accept()
            self._http.socket = ssl_context.wrap_socket(self._http.socket, server_side=True,
                                                        do_handshake_on_connect=False)
        self._http_thread = threading.Thread(target=self._http.serve_forever, name="kws-metrics", daemon=True)
        self._http_thread.start()
        return int(self._http.server_port)

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _MetricsServer(ThreadingWSGIServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that fails the TLS handshake or hangs up is its problem, not a server traceback."""
        if not isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _QuietHandler(WSGIRequestHandler):
    timeout = 10  # seconds a connection may stay silent (handshake included)

    def log_message(self, format: str, *args: Any) -> None:  # no access log (prometheus_client's habit)
        pass


class CallRecord:
    """What the servicer learnt about one call: its status code and, on failure, the error type."""

    def __init__(self) -> None:
        self.code = "OK"
        self.error = ""

    def fail(self, code: str, error: str) -> None:
        self.code, self.error = code, error
