"""What grpc.aio itself costs a server per call: a grpc.aio server whose kws.v1 Predict returns a fixed
reply (no parsing, no model, no features, no metrics), driven exactly as bench-peers drives kws (the same
request bodies, 32 clients on their own connections from two client processes), its CPU per call read
from /proc. Add it to the floor (bench/floor.py) for the least any Python grpc.aio server can spend on a
request; kws's and KServe's gRPC rows in bench-peers sit about 0.1-0.2 ms above that sum.

`--server grpclib` serves the same fixed reply from grpclib (pure-Python HTTP/2 on asyncio), the other
gRPC server Python has; it is not a kws dependency: `pip install --target DIR grpclib` and put DIR on
PYTHONPATH.

    python -m bench.empty_grpc [--server grpc.aio|grpclib] [--clients 32] [--seconds 8] [--rounds 2]
                                                                    -> results/empty_grpc.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_peers import REPO, Server, kws_bodies, measure
from bench.common import RESULTS, format_table, write_results
from bench.load import PREDICT, Job, drive
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from tests.support.network import free_port, wait_listening

PAYLOADS = ("grpc-wav", "grpc-features")
SERVERS = ("grpc.aio", "grpclib")
REPLY = pb.PredictResponse(prediction=pb.Prediction(label="yes")).SerializeToString()


async def _serve_grpclib(port: int) -> None:
    from grpclib.const import Cardinality, Handler
    from grpclib.encoding.base import CodecBase
    from grpclib.server import Server as GrpclibServer

    class Raw(CodecBase):  # raw bytes in and out: nothing parsed
        __content_subtype__ = "proto"

        def encode(self, message: bytes, message_type: Any) -> bytes:
            return message

        def decode(self, data: bytes, message_type: Any) -> bytes:
            return data

    class Empty:
        async def predict(self, stream: Any) -> None:
            await stream.recv_message()
            await stream.send_message(REPLY)

        def __mapping__(self) -> dict[str, Any]:
            return {PREDICT: Handler(self.predict, Cardinality.UNARY_UNARY, bytes, bytes)}

    server = GrpclibServer([Empty()], codec=Raw())
    await server.start("127.0.0.1", port)
    await server.wait_closed()


async def _serve(port: int) -> None:
    import grpc

    async def predict(request: bytes, context: Any) -> bytes:  # raw bytes in and out: nothing parsed
        return REPLY

    server = grpc.aio.server()
    service, method = PREDICT.strip("/").split("/")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(predict)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", choices=SERVERS, default="grpc.aio", help="the gRPC server library")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=8.0, help="per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "empty_grpc.json")
    ap.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)  # the server child
    a = ap.parse_args(argv)
    if a.serve is not None:
        asyncio.run((_serve_grpclib if a.server == "grpclib" else _serve)(a.serve))
        return 0
    if a.server == "grpclib" and importlib.util.find_spec("grpclib") is None:
        ap.error("--server grpclib needs grpclib, which kws does not install: "
                 "pip install --target DIR grpclib, then run with PYTHONPATH=DIR")
    port = free_port()
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-m", "bench.empty_grpc", "--server", a.server, "--serve", str(port)],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": path})
    server = Server("empty", 1, proc, f"127.0.0.1:{port}", "")
    rows = []
    try:
        wait_listening("127.0.0.1", port, 60)
        bodies = kws_bodies(KwsModel(REPO / "models" / "big_int8.tflite"))
        for payload in PAYLOADS:
            job = Job("grpc", server.grpc_target, bodies[payload], a.clients, 10**9, a.seconds, check="status")
            drive(job, processes=2)  # warm-up
            runs = [measure(server, job) for _ in range(a.rounds)]
            rows.append({"server": a.server, "payload": payload, "clients": a.clients,
                         "req_per_s": float(np.mean([r["req_per_s"] for r in runs])),
                         "cpu_us_per_call": 1000 * float(np.mean([r["cpu_ms_per_req"] for r in runs])),
                         "errors": sum(r["errors"] for r in runs)})
    finally:
        server.stop()
    print(format_table(rows, list(rows[0])))
    write_results(a.out, {"clients": a.clients, "seconds": a.seconds, "rounds": a.rounds, "rows": rows})
    print(f"wrote {a.out}")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
