"""`make bench-server`: throughput and latency of kws-server on loopback.

For each server process count (``kws-server --processes N``) it starts the server with its REST gateway
as a child process, then drives it from separate client processes (bench/load.py) with 1..128
concurrent clients, each on its own connection: gRPC with 5-bit compressed log-mel (``grpc-q5z``), float32
log-mel (``grpc-features``) or the WAV file (``grpc-wav``), the same float32 features or WAV over the Open
Inference Protocol's ModelInfer (``v2-grpc-features``, ``v2-grpc-wav``: raw tensors, as tritonclient sends
them), the WAV on one ``PredictStream`` per client (``grpc-stream-wav``), and over HTTP the reference SenML
body through the gateway (``rest``), ``/v1/predict`` with the proto's JSON (``rest-v1``) and the V2 routes
(``v2-rest-wav``: JSON, base64; ``v2-rest-features``: the binary tensor extension). Each cell stops after
--requests requests or --seconds, whichever comes first. Reports requests/s, p50/p99 latency, errors,
wrong labels, the RSS of all server processes, and the server's CPU per request (all its processes)
beside the floor (``bench/floor.py``: decoding, features and the model, measured in this process); writes results/bench_server.json (``make
bench-server-commit`` refreshes the committed bench/results/server.json). Run as ``python -m
bench.bench_server`` from the repository root.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import RESULTS, format_table, latency_summary, tree_cpu_seconds, tree_rss_mb, write_results
from bench.floor import floor_ms
from bench.load import Job, drive
from edge.cascade import repo_relative
from kws_rpc.proto.inference import grpc_service_pb2 as v2
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.wire import v2 as v2_wire
from kws_rpc.wire.encodings import request_for
from kws_rpc.wire.senml import spec_body_for_wav
from tests.support.network import free_port, wait_listening

REPO = Path(__file__).resolve().parent.parent
CLIPS = REPO / "tests" / "fixtures" / "clips"
# payload -> (what the floor is: bench.floor.KINDS, how it travels)
PAYLOADS = {"grpc-wav": "wav", "grpc-q5z": "features", "grpc-dct": "features", "grpc-features": "features",
            "grpc-stream-wav": "wav", "v2-grpc-features": "features", "v2-grpc-wav": "wav", "rest": "wav-base64",
            "rest-adpcm": "wav-base64", "rest-v1": "wav-base64", "v2-rest-wav": "wav-base64",
            "v2-rest-features": "features"}
V2_INFER = "/inference.GRPCInferenceService/ModelInfer"
COLUMNS = ["processes", "batching", "payload", "clients", "requests", "req_per_s", "p50_ms", "p99_ms",
           "error_rate", "wrong", "bytes", "cpu_ms_per_req", "floor_ms", "rss_mb"]


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    model: Path
    concurrency: tuple[int, ...]
    requests: int  # per cell
    seconds: float  # per cell, at most
    payloads: tuple[str, ...]  # grpc-wav, grpc-q5z, grpc-dct, rest, rest-adpcm
    processes: tuple[int, ...]  # server processes (kws-server --processes)
    batching: tuple[str, ...]
    max_batch_size: int
    max_delay_ms: float
    out: Path


class ServerProcess:
    """kws-server (--processes N) as a child process on fixed free ports."""

    def __init__(self, model: Path, processes: int, batch: int, delay_ms: float) -> None:
        self.port, self.gateway_port = free_port(), free_port()
        self.metrics_port = free_port()
        cmd = [sys.executable, "-m", "kws_rpc.serving.server", "--model", str(model), "--port", str(self.port),
               "--gateway-port", str(self.gateway_port), "--metrics-port", str(self.metrics_port),
               "--processes", str(processes), "--max-batch-size", str(batch), "--max-delay-ms", str(delay_ms),
               "--max-streams", "256", "--max-inflight", "1024", "--log-level", "WARNING"]
        self.proc = subprocess.Popen(cmd, cwd=REPO)
        for port in (self.port, self.gateway_port):
            wait_listening("127.0.0.1", port, 60)
        self.grpc_target = f"127.0.0.1:{self.port}"
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        self.peak_rss_mb = 0.0

    def rss_mb(self) -> float:
        """RSS of the whole server: the supervisor and every server process."""
        rss = tree_rss_mb(self.proc.pid)
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        return rss

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def request_bodies(model: Path) -> dict[str, list[tuple[str, bytes]]]:
    """Per payload, (word, serialized request) for each fixture clip, built as the edge builds them."""
    from kws_rpc.audio.wav import decode_wav

    m = KwsModel(model)
    config = m.feature_config
    clips = [(p.stem, p.read_bytes()) for p in sorted(CLIPS.glob("*.wav"))]
    bodies: dict[str, list[tuple[str, bytes]]] = {p: [] for p in PAYLOADS}
    for i, (word, wav) in enumerate(clips):
        audio, _ = decode_wav(wav)
        bodies["grpc-wav"].append((word, pb.PredictRequest(request_id=str(i), audio=pb.Audio(wav=wav)).SerializeToString()))
        feats = m.features(audio).astype("<f4")
        bodies["grpc-features"].append((word, request_for("grpc-logmel-f32", audio, str(i), "bench", config)
                                        .SerializeToString()))
        bodies["v2-grpc-features"].append((word, v2_infer_request(m.name, str(i), v2_wire.FEATURES, "FP32",
                                                                  [1, *feats.shape], feats.tobytes())))
        bodies["v2-grpc-wav"].append((word, v2_infer_request(m.name, str(i), v2_wire.WAV, "BYTES", [1],
                                                             v2_wire.join_bytes([wav]))))
        bodies["grpc-stream-wav"].append(bodies["grpc-wav"][-1])
        bodies["rest-v1"].append((word, json.dumps({"request_id": str(i), "audio": {"wav": b64(wav)}}).encode()))
        bodies["v2-rest-wav"].append((word, json.dumps({"inputs": [{"name": v2_wire.WAV, "shape": [1],
                                                                    "datatype": "BYTES", "data": [b64(wav)]}]}).encode()))
        bodies["v2-rest-features"].append((word, V2_BINARY_HEAD + feats.tobytes()))
        q5z = request_for("grpc-logmel-q5z", audio, str(i), "bench", config)
        bodies["grpc-q5z"].append((word, q5z.SerializeToString()))
        bodies["grpc-dct"].append((word, request_for("grpc-logmel-dct", audio, str(i), "bench", config).SerializeToString()))
        bodies["rest"].append((word, json.dumps(spec_body_for_wav(wav, "bench")).encode()))
        bodies["rest-adpcm"].append((word, json.dumps(request_for("rest-adpcm", audio, str(i), "bench", config)).encode()))
    return bodies


# The binary tensor extension: a JSON head, then the tensor's bytes; the head is the same for every clip
V2_BINARY_HEAD = json.dumps({"inputs": [{"name": v2_wire.FEATURES, "shape": [1, 49, 40], "datatype": "FP32",
                                         "parameters": {"binary_data_size": 49 * 40 * 4}}]}).encode()  # big's 49x40
REST_ROUTES = {  # payload -> (method, path, headers); the default is the spec's PUT /
    "rest-v1": ("POST", "/v1/predict", (("Content-Type", "application/json"),)),
    "v2-rest-wav": ("POST", "/v2/models/{model}/infer", (("Content-Type", "application/json"),)),
    "v2-rest-features": ("POST", "/v2/models/{model}/infer",
                         (("Inference-Header-Content-Length", str(len(V2_BINARY_HEAD))),)),
}


def v2_infer_request(model: str, request_id: str, name: str, datatype: str, shape: list[int], raw: bytes) -> bytes:
    """A serialized ModelInferRequest with one raw input, as tritonclient builds it."""
    return v2.ModelInferRequest(model_name=model, id=request_id, raw_input_contents=[raw], inputs=[
        v2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)]).SerializeToString()


def run_cell(server: ServerProcess, payload: str, bodies: list[tuple[str, bytes]], clients: int, requests: int,
             seconds: float, model: str = "") -> dict[str, Any]:
    transport = "rest" if payload.startswith(("rest", "v2-rest")) else "grpc"
    target = server.gateway_url if transport == "rest" else server.grpc_target
    job = Job(transport, target, bodies, clients, requests, seconds, stream=payload == "grpc-stream-wav")
    if payload.startswith("v2-grpc"):  # labels are not checked: the reply is a ModelInferResponse
        job = dataclasses.replace(job, grpc_method=V2_INFER, check="status")
    elif payload in REST_ROUTES:  # only the status is checked: the reply is not the spec body
        method, path, headers = REST_ROUTES[payload]
        job = dataclasses.replace(job, http=(method, path.format(model=model), headers), check="status")
    cpu0 = server.cpu_seconds()
    out = drive(job, processes=1 if transport == "grpc" or clients < 8 else 2)
    cpu = server.cpu_seconds() - cpu0
    done = len(out["latencies"]) + out["errors"]
    return {"requests": done, "seconds": out["elapsed"], "req_per_s": len(out["latencies"]) / out["elapsed"],
            "error_rate": out["errors"] / max(done, 1), "errors": out["errors"], "wrong": out["wrong"],
            "cpu_ms_per_req": 1000 * cpu / max(done, 1), **latency_summary(out["latencies"])}


def run(config: BenchConfig) -> list[dict[str, Any]]:
    bodies = request_bodies(config.model)
    model = KwsModel(config.model)
    floors = floor_ms(model, sorted(CLIPS.glob("*.wav")))
    print(f"floor (ms of CPU per request): {', '.join(f'{k} {v:.2f}' for k, v in floors.items())}", flush=True)
    rows: list[dict[str, Any]] = []
    for processes in config.processes:
        for batching in config.batching:
            server = ServerProcess(config.model, processes, config.max_batch_size if batching == "on" else 1,
                                   config.max_delay_ms)
            try:
                for payload in config.payloads:
                    # warm-up: connections, interpreters
                    run_cell(server, payload, bodies[payload], 8, 400, 10, model.name)
                    for n in config.concurrency:
                        cell = run_cell(server, payload, bodies[payload], n, config.requests, config.seconds,
                                        model.name)
                        row = {"processes": processes, "batching": batching, "payload": payload, "clients": n,
                               **cell, "floor_ms": floors[PAYLOADS[payload]], "bytes": len(bodies[payload][0][1]),
                               "rss_mb": server.rss_mb()}
                        rows.append(row)
                        print(format_table([row], COLUMNS, 10).splitlines()[-1], flush=True)
                for row in rows:
                    if row["processes"] == processes and row["batching"] == batching:
                        row["peak_rss_mb"] = server.peak_rss_mb
            finally:
                server.stop()
    return rows


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "big_int8.tflite")
    ap.add_argument("--concurrency", default="1,8,32,128", help="comma-separated concurrent client counts")
    ap.add_argument("--requests", type=int, default=2000, help="requests per cell (at most)")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds per cell (at most)")
    ap.add_argument("--payloads", default="grpc-wav,grpc-q5z,grpc-features,grpc-stream-wav,v2-grpc-features,"
                                          "v2-grpc-wav,rest,rest-v1,v2-rest-wav,v2-rest-features",
                    help="grpc-q5z (5-bit log-mel, 791 B), grpc-dct (DCT_RC log-mel, <= 300 B), grpc-wav (the WAV "
                         "file), grpc-features (float32 log-mel, 7.8 kB), v2-grpc-features / v2-grpc-wav (the same "
                         "over the Open Inference Protocol's ModelInfer, raw tensors), rest (the reference SenML "
                         "body), rest-adpcm (the SenML body with an IMA ADPCM WAV, 4x smaller; the server decodes it), "
                         "grpc-stream-wav (the WAV on one PredictStream per client), rest-v1 (/v1/predict, proto "
                         "JSON), v2-rest-wav (V2 JSON, base64 WAV), v2-rest-features (V2 binary tensor extension)")
    ap.add_argument("--processes", default="1,2", help="server process counts to measure (kws-server --processes)")
    ap.add_argument("--batching", default="off", help="off, on or off,on (the micro-batcher)")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-delay-ms", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_server.json",
                    help="JSON results (default: results/bench_server.json)")
    a = ap.parse_args(argv)
    return BenchConfig(a.model, tuple(int(c) for c in a.concurrency.split(",")), a.requests, a.seconds,
                       tuple(a.payloads.split(",")), tuple(int(p) for p in a.processes.split(",")),
                       tuple(a.batching.split(",")), a.max_batch_size, a.max_delay_ms, a.out)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    if not config.model.is_file():
        sys.exit(f"{config.model} not found: train it (make train) or pass --model")
    print(format_table([], COLUMNS, 10))
    rows = run(config)
    path = write_results(config.out, {"config": {k: repo_relative(v) if isinstance(v, Path) else v
                                                 for k, v in dataclasses.asdict(config).items()},
                                      "notes": "loopback; the load generator (bench/load.py: grpc.aio tasks, or "
                                               "HTTP/1.1 threads for REST, one connection per client) runs in its "
                                               "own processes but shares the machine's 2 cores with the server; "
                                               "requests are the fixture clips as grpc-q5z, grpc-wav or the "
                                               "reference REST body; rss_mb = all server processes",
                                      "results": rows})
    print(f"\n{format_table(rows, COLUMNS)}\n\nwrote {path}")
    if any(r["errors"] for r in rows):
        sys.exit("some requests failed: the error rate must be 0")


if __name__ == "__main__":
    main()
