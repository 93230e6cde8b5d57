"""The server's configuration: a frozen ``ServerConfig``, built from the command line by ``parse_args``
(in ``kws-server``'s main, never at import), read by ``serve`` and the supervisor."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from kws_rpc.security import auth, tls
from kws_rpc.security.auth import AuthConfig
from kws_rpc.security.tls import ServerTls
from kws_rpc.serving.limits import Limits, add_limit_args, limits_from_args
from kws_rpc.wire.senml import SPEC_LABELS, parse_label_order, validate_label_order


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    models: tuple[Path, ...]  # .tflite files, each with its card beside it; the first is the default
    host: str = "127.0.0.1"
    port: int = 0  # 0 = the OS picks a free port (logged)
    # Rows per model invocation; 1 = batching off (direct calls). Off by default: on this CPU the model
    # costs the same per row at every batch size (bench/results/server.json); keep it for accelerators.
    max_batch_size: int = 1
    max_delay_ms: float = 2.0  # longest a request waits for companions
    workers: int = 1  # micro-batcher threads
    max_queue: int = 1024  # waiting requests beyond this are RESOURCE_EXHAUSTED
    grpc_threads: int = 64  # batching on: calls waiting for their batch at once (off: calls run on the event loop)
    max_message_bytes: int = 4 << 20
    metrics_port: int | None = None  # None = no /metrics endpoint; 0 = a free port
    gateway_port: int | None = None  # None = no REST gateway; 0 = a free port
    grace_s: float = 5.0  # how long in-flight calls may finish at shutdown
    log_level: str = "INFO"
    spec_labels: tuple[str, ...] = SPEC_LABELS  # the gateway's label_idx order; must cover every model
    tls: ServerTls | None = None  # gRPC, the gateway and /metrics; None = plaintext (loopback, or --insecure)
    auth: AuthConfig = AuthConfig()  # bearer tokens (default none) and the per-client rate limit
    insecure: bool = False  # allow plaintext on a non-loopback host
    limits: Limits = Limits()  # streams, calls in flight, idle and read timeouts (see kws_rpc.serving.limits)
    reuse_port: bool = False  # SO_REUSEPORT on the gRPC and gateway ports: several processes share them
    processes: int = 1  # main() runs this many server processes on the same ports (one GIL each)

    def __post_init__(self) -> None:
        validate_label_order(self.spec_labels)

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    d = ServerConfig(models=())
    ap = argparse.ArgumentParser(description="kws gRPC server (optionally with the REST gateway)")
    ap.add_argument("--model", action="append", required=True, type=Path,
                    help="a .tflite with its card; repeat for more (the first is the default)")
    ap.add_argument("--host", default=d.host, help="address to bind (default %(default)s: loopback only; 0.0.0.0 for a LAN)")
    ap.add_argument("--port", type=int, default=d.port, help="gRPC port (default %(default)s); 0 = a free one, logged")
    ap.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="most requests run as one inference call (default %(default)s); 1 turns batching off")
    ap.add_argument("--max-delay-ms", type=float, default=d.max_delay_ms,
                    help="longest a request waits for others to share its batch (default %(default)s ms)")
    ap.add_argument("--workers", type=int, default=d.workers, help="inference threads, each with its own interpreters (default %(default)s)")
    ap.add_argument("--max-queue", type=int, default=d.max_queue,
                    help="queued requests before new ones get RESOURCE_EXHAUSTED (default %(default)s)")
    ap.add_argument("--grpc-threads", type=int, default=d.grpc_threads,
                    help="with batching on (--max-batch-size above 1), calls that wait for their batch at once "
                         "(default %(default)s); with batching off, calls run on the event loop and need no threads")
    ap.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes,
                    help="largest gRPC message accepted (default %(default)s bytes)")
    ap.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics here")
    ap.add_argument("--gateway-port", type=int, default=None, help="also run the REST gateway here")
    ap.add_argument("--spec-labels", default=",".join(d.spec_labels),
                    help="label order that label_idx in the gateway's reply to / indexes; must name every label "
                         "of every model (default: the course's order, then the listening models' rejections: %(default)s)")
    ap.add_argument("--grace", type=float, default=d.grace_s, help="seconds for in-flight calls at shutdown")
    ap.add_argument("--processes", type=int, default=None,
                    help="server processes sharing the ports through SO_REUSEPORT, each with one BLAS thread "
                         "and its own GIL (default: the number of cores; 1 with --port 0). Process i serves "
                         "/metrics on --metrics-port + i")
    ap.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set for --processes' children
    ap.add_argument("--log-level", default=d.log_level, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    ap.add_argument("--insecure", action="store_true",
                    help="allow plaintext on a non-loopback --host (refused otherwise: give --tls-cert/--tls-key)")
    tls.add_server_args(ap)
    auth.add_server_args(ap)
    add_limit_args(ap)
    a = ap.parse_args(argv)
    try:
        spec_labels = parse_label_order(a.spec_labels)
        limits = limits_from_args(a)
        security = {"tls": tls.server_tls_from_args(a), "auth": auth.auth_config_from_args(a), "insecure": a.insecure}
    except ValueError as e:
        ap.error(str(e))
    processes = a.processes if a.processes is not None else (os.cpu_count() or 1) if a.port else 1
    if processes < 1:
        ap.error("--processes must be at least 1")
    if processes > 1 and (a.port == 0 or a.gateway_port == 0 or a.metrics_port == 0):
        ap.error("--processes above 1 needs fixed ports (--port, --gateway-port, --metrics-port): with port 0 "
                 "each process would listen somewhere else")
    return ServerConfig(tuple(a.model), a.host, a.port, a.max_batch_size, a.max_delay_ms, a.workers, a.max_queue,
                        a.grpc_threads, a.max_message_bytes, a.metrics_port, a.gateway_port, a.grace, a.log_level,
                        spec_labels, limits=limits, reuse_port=a.reuse_port, processes=processes, **security)
