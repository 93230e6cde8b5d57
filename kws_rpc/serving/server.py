"""`kws-server`: the gRPC server (plus, optionally, the REST gateway and /metrics) around one core.

``serve(config)`` wires everything and returns a handle (tests start it in-process on port 0);
``main()`` builds the config from the command line (``kws_rpc.serving.config``) and stops gracefully on
SIGTERM/SIGINT; ``--processes N`` hands over to ``kws_rpc.serving.supervisor``.

The gRPC server is ``grpc.aio`` on an event loop of its own thread (``EventLoopThread``), so the handle
stays synchronous for its callers; the REST gateway runs uvicorn on another. A call costs no pool
thread and no hand-off between threads (see ``kws_rpc.serving.servicer`` for where the model runs).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kws_rpc.model.batching import MicroBatcher
from kws_rpc.model.core import InferenceCore
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.model.native import tune_process
from kws_rpc.security import tls
from kws_rpc.security.auth import Guard
from kws_rpc.serving import lifeline, ports, v2_servicer
from kws_rpc.serving.config import ServerConfig, parse_args
from kws_rpc.serving.gateway import GatewayConfig, GatewayServer
from kws_rpc.serving.grpc_auth import GuardInterceptor
from kws_rpc.serving.grpc_limits import StreamGate
from kws_rpc.serving.http_auth import wsgi_guard
from kws_rpc.serving.local_backend import LocalBackend
from kws_rpc.serving.metrics import Metrics
from kws_rpc.serving.servicer import KwsServicer, add_to_server
from kws_rpc.wire.senml import check_label_order
from kws_rpc.wire.service import SERVICE

log = logging.getLogger("kws_rpc.serving.server")
T = TypeVar("T")


class EventLoopThread:
    """An asyncio event loop running in a daemon thread; ``run`` waits for a coroutine on it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


class ServerHandle:
    """A running server; ``stop`` is idempotent."""

    def __init__(self, config: ServerConfig, server: grpc.aio.Server, port: int, core: InferenceCore,
                 health_servicer: health.aio.HealthServicer, metrics: Metrics, metrics_port: int | None,
                 gateway: GatewayServer | None, serving: threading.Event, loop: EventLoopThread,
                 offload: ThreadPoolExecutor | None) -> None:
        self.config, self.server, self.port, self.core = config, server, port, core
        self.health, self.metrics, self.metrics_port, self.gateway = health_servicer, metrics, metrics_port, gateway
        self.target = f"{_loopback(config.host)}:{port}"
        self.serving = serving  # what /readyz and gRPC health report
        self.loop, self._offload = loop, offload
        self._stopped = threading.Event()
        self._terminated = threading.Event()

    def stop(self, grace: float | None = None) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.grace_s if grace is None else grace
        log.info("shutting down: refusing new calls, %.1f s for calls in flight", grace)
        self.serving.clear()
        self.metrics.ready.set(0)
        try:
            self.loop.run(self.health.enter_graceful_shutdown(), 5)
            if self.gateway is not None:
                self.gateway.stop(timeout=grace + 1)
        finally:
            self.loop.run(self.server.stop(grace))
            if self._offload is not None:
                self._offload.shutdown(wait=False)
            self.core.close()
            self.metrics.stop()
            self.loop.close()
            self._terminated.set()
            log.info("stopped")

    def wait(self) -> None:
        self._terminated.wait()


def _loopback(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]"}.get(host, host)


def load_core(config: ServerConfig, metrics: Metrics) -> InferenceCore:
    models: dict[str, KwsModel] = {}
    for path in config.models:
        m = KwsModel(path)
        if m.name in models:
            raise ValueError(f"two models are named {m.name!r} ({models[m.name].path}, {path})")
        models[m.name] = m
        log.info("loaded model %s v%s (%s, %d labels, input %s) from %s", m.name, m.card.version,
                 m.card.architecture, len(m.labels), m.card.feature.shape, path)
        # refuse now, not at the first request to /: the default model answers the spec body. Other models
        # (the listening ones, with _silence_ and _unknown_) serve /v1/predict and gRPC; / checks them per call.
        if config.gateway_port is not None and len(models) == 1:
            check_label_order(config.spec_labels, m.labels, m.name)
    batcher = None
    if config.batching:
        batcher = MicroBatcher(config.max_batch_size, config.max_delay_ms, config.workers, config.max_queue,
                               on_batch=metrics.observe_batch, wait_for="incoming")
    return InferenceCore(models, default=next(iter(models)), batcher=batcher, timeout_s=config.limits.call_timeout_s)


def stream_gate(config: ServerConfig, metrics: Metrics) -> StreamGate:
    return StreamGate(config.limits.max_streams, config.limits.stream_idle_s, metrics.refused)


async def _start_grpc(config: ServerConfig, core: InferenceCore, metrics: Metrics, guard: Guard,
                      offload: ThreadPoolExecutor | None,
                      serving: threading.Event) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Builds and starts the grpc.aio server; runs on the server's event loop."""
    opts = [("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes), ("grpc.so_reuseport", int(config.reuse_port))]
    interceptors = [GuardInterceptor(guard, metrics)] if GuardInterceptor.needed(guard, config.host) else []
    server = grpc.aio.server(options=opts, interceptors=interceptors,
                             maximum_concurrent_rpcs=config.limits.max_inflight)
    add_to_server(KwsServicer(core, metrics, stream_gate(config, metrics), offload), server)
    v2_servicer.add_to_server(v2_servicer.V2Servicer(core, metrics, serving.is_set, offload), server)  # KServe V2
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE, v2_servicer.SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server)
    address = f"{config.host}:{config.port}"
    port = (server.add_secure_port(address, config.tls.grpc_credentials()) if config.tls is not None
            else server.add_insecure_port(address))
    await server.start()
    return server, port, health_servicer


def serve(config: ServerConfig) -> ServerHandle:
    """Loads the models, starts gRPC (+ gateway, + metrics) and reports SERVING."""
    if not config.models:
        raise ValueError("no model given: pass --model models/big.tflite")
    if config.tls is not None:
        config.tls.check()
    tls.check_exposure(config.host, config.tls, config.insecure)
    metrics = Metrics()
    core = load_core(config, metrics)
    guard = Guard(config.auth)
    # with batching on, calls wait for their batch in these threads, not on the event loop
    offload = (ThreadPoolExecutor(config.grpc_threads, thread_name_prefix="kws-batch-wait") if core.batcher
               else None)
    loop = EventLoopThread("kws-grpc")
    serving = threading.Event()
    try:
        server, port, health_servicer = loop.run(_start_grpc(config, core, metrics, guard, offload, serving))
    except BaseException:
        loop.close()
        core.close()
        raise
    gateway = metrics_port = None
    try:
        if config.metrics_port is not None:
            protect = config.auth.tokens is not None and config.auth.protect_introspection
            metrics_port = metrics.serve(config.host, config.metrics_port,
                                         config.tls.ssl_context() if config.tls is not None else None,
                                         (lambda app: wsgi_guard(app, guard)) if protect else None)
        if config.gateway_port is not None:
            # One data plane: the co-hosted gateway calls the handlers in this process, no gRPC hop.
            local = LocalBackend(core, metrics, ready=serving.is_set)
            gateway = GatewayServer(GatewayConfig("in-process", config.host, config.gateway_port,
                                                  log_level=config.log_level.lower(), spec_labels=config.spec_labels,
                                                  tls=config.tls, auth=config.auth, limits=config.limits,
                                                  reuse_port=config.reuse_port),
                                    grace_s=config.grace_s, guard=guard, backend=local)
    except BaseException:
        loop.run(server.stop(0))
        loop.close()
        core.close()
        metrics.stop()
        raise

    async def report_serving() -> None:
        for name in ("", SERVICE, v2_servicer.SERVICE):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    loop.run(report_serving())
    metrics.ready.set(1)
    serving.set()
    log.info("serving %s on grpc %s:%d (batching %s), gateway %s, metrics %s; %s", sorted(core.models),
             config.host, port,
             f"max {config.max_batch_size} rows / {config.max_delay_ms} ms" if config.batching else "off",
             gateway.url if gateway else "off",
             f"{'https' if config.tls else 'http'}://{config.host}:{metrics_port}/metrics"
             if metrics_port is not None else "off", tls.describe(config.tls, config.auth))
    return ServerHandle(config, server, port, core, health_servicer, metrics, metrics_port, gateway, serving, loop,
                        offload)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    config = parse_args(argv)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.processes > 1:
        from kws_rpc.serving.supervisor import supervise

        try:
            raise SystemExit(supervise(config, argv))
        except ports.PortTaken as e:
            raise SystemExit(f"kws-server: error: {e}") from None
    tune_process()
    stop = threading.Event()

    def on_signal(signum: int, _: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    parent = lifeline.supervisor_pid()
    held = None
    try:
        if parent is not None:  # a child of the supervisor: it claimed the ports; stop if it dies
            lifeline.follow(parent)
        else:
            held = ports.claim(config.host, [config.port, config.gateway_port, config.metrics_port])
        handle = serve(config)
    except (ValueError, ports.PortTaken) as e:  # a configuration the models refuse (e.g. --spec-labels), a
        raise SystemExit(f"kws-server: error: {e}") from None  # taken port: a message, not a traceback
    try:
        while not stop.wait(0.5):
            pass
    finally:
        handle.stop()
        if held is not None:
            held.release()


if __name__ == "__main__":
    main()
