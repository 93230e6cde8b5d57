"""Resource bounds against slow, idle or greedy clients: one typed config with the documented defaults,
shared by the gRPC server (``kws_rpc.serving.grpc_limits``) and the REST gateway (``kws_rpc.serving.http_limits``).

The defaults keep the measured attacks out: idle ``PredictStream`` calls pile up (each holds a slot of
``--max-inflight`` and its buffers until it ends); 300 half-sent HTTP bodies used to be held open forever.
No transport is imported here.
"""

from __future__ import annotations

import argparse
import dataclasses


@dataclasses.dataclass(frozen=True)
class Limits:
    # gRPC
    max_streams: int = 16  # streaming calls open at once; more: RESOURCE_EXHAUSTED at once
    max_inflight: int = 256  # gRPC calls of any kind at once, running or queued; more: RESOURCE_EXHAUSTED
    stream_idle_s: float = 30.0  # a stream with no request for this long ends with DEADLINE_EXCEEDED
    call_timeout_s: float = 10.0  # batching on: the longest a prediction waits for its batch; DEADLINE_EXCEEDED
    # HTTP (the gateway)
    http_header_timeout_s: float = 10.0  # a connection must send a whole request head within this; else closed
    http_body_timeout_s: float = 10.0  # and the body within this of its head: 408, connection closed
    http_keep_alive_s: int = 5  # an idle keep-alive connection is closed after this (uvicorn's timeout_keep_alive)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"--{f.name.replace('_', '-')} must be positive, got {getattr(self, f.name)}")


def add_limit_args(ap: argparse.ArgumentParser, grpc: bool = True, http: bool = True) -> None:
    d = Limits()
    g = ap.add_argument_group("resource limits")
    if grpc:
        g.add_argument("--max-streams", type=int, default=d.max_streams,
                       help="streaming calls open at once; more are refused with RESOURCE_EXHAUSTED "
                            "(default %(default)s)")
        g.add_argument("--max-inflight", type=int, default=d.max_inflight,
                       help="gRPC calls at once, running or queued; more are refused (default %(default)s)")
        g.add_argument("--stream-idle-s", type=float, default=d.stream_idle_s,
                       help="end a stream that sends no request for this long (default %(default)s s)")
        g.add_argument("--call-timeout-s", type=float, default=d.call_timeout_s,
                       help="with batching on, the longest a prediction waits for its batch (queue and "
                            "model) before DEADLINE_EXCEEDED (default %(default)s s)")
    if http:
        g.add_argument("--http-header-timeout-s", type=float, default=d.http_header_timeout_s,
                       help="close an HTTP connection that sends no complete request head for this long "
                            "(default %(default)s s)")
        g.add_argument("--http-body-timeout-s", type=float, default=d.http_body_timeout_s,
                       help="answer 408 to a request body not received within this (default %(default)s s)")
        g.add_argument("--http-keep-alive-s", type=int, default=d.http_keep_alive_s,
                       help="close idle keep-alive connections after this (default %(default)s s)")


def limits_from_args(a: argparse.Namespace) -> Limits:
    """The Limits the parsed flags give (flags ``add_limit_args`` left out keep their defaults)."""
    return Limits(**{f.name: getattr(a, f.name) for f in dataclasses.fields(Limits) if hasattr(a, f.name)})
