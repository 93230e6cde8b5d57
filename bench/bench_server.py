"""`make bench-server`: throughput and latency of kws-server on loopback.

For batching on and off it starts ``python -m kws_rpc.server`` (with its REST gateway) as a child
process, then drives it with 1..128 client threads, over gRPC directly and through the gateway with the
reference SenML body. Each cell stops after --requests requests or --seconds, whichever comes first.
Reports requests/s, p50/p99 latency, error rate, wrong labels and the server's RSS; writes
results/bench_server.json (``make bench-server-commit`` refreshes the committed bench/results/server.json).
Run as ``python -m bench.bench_server`` from the repository root.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psutil
import requests

from bench.common import RESULTS, format_table, latency_summary, write_results
from edge.cascade import repo_relative
from kws_rpc.senml import spec_body_for_wav
from kws.v1 import kws_pb2 as pb
from kws.v1 import kws_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parent.parent
CLIPS = REPO / "tests" / "fixtures" / "clips"
COLUMNS = ["batching", "transport", "clients", "requests", "req_per_s", "p50_ms", "p99_ms", "error_rate",
           "wrong", "mean_batch", "rss_mb"]


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    model: Path
    concurrency: tuple[int, ...]
    requests: int  # per cell
    seconds: float  # per cell, at most
    transports: tuple[str, ...]
    batching: tuple[str, ...]
    max_batch_size: int
    max_delay_ms: float
    out: Path


class ServerProcess:
    """kws-server as a child process; ports are read from its log (it binds port 0)."""

    def __init__(self, model: Path, batch: int, delay_ms: float) -> None:
        cmd = [sys.executable, "-m", "kws_rpc.server", "--model", str(model), "--port", "0", "--gateway-port", "0",
               "--max-batch-size", str(batch), "--max-delay-ms", str(delay_ms), "--metrics-port", "0",
               "--log-level", "INFO"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        ready = threading.Event()
        threading.Thread(target=self._drain, args=(ready,), daemon=True).start()
        if not ready.wait(60) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("kws-server did not start:\n" + "".join(self.log[-20:]))
        line = next(x for x in self.log if "serving" in x)
        self.grpc_target = re.search(r"on grpc ([\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
        self.gateway_url = re.search(r"gateway (http://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
        self.metrics_url = re.search(r"metrics (http://\S+/metrics)", line).group(1)  # type: ignore[union-attr]
        self.ps = psutil.Process(self.proc.pid)

    def _drain(self, ready: threading.Event) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            if "serving" in line:
                ready.set()
        ready.set()

    def batches(self) -> tuple[float, float]:
        """(model invocations, rows) so far, from the server's kws_batch_size histogram."""
        text = requests.get(self.metrics_url, timeout=5).text
        total = [sum(float(v) for v in re.findall(rf"^kws_batch_size_{k}{{[^}}]*}} (\S+)$", text, re.M))
                 for k in ("count", "sum")]
        return total[0], total[1]

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def grpc_client(target: str) -> Callable[[bytes], str]:
    channel = grpc.insecure_channel(target)
    stub = pb_grpc.KeywordSpottingStub(channel)
    return lambda wav: stub.Predict(pb.PredictRequest(audio=pb.Audio(wav=wav)), timeout=30).prediction.label


def rest_client(url: str) -> Callable[[bytes], str]:
    local = threading.local()

    def call(wav: bytes) -> str:
        session = local.__dict__.setdefault("s", requests.Session())
        r = session.put(url + "/", data=json.dumps(spec_body_for_wav(wav, "bench")), timeout=30)
        r.raise_for_status()
        return r.json()["label"]

    return call


def run_cell(call: Callable[[bytes], str], clips: list[tuple[str, bytes]], clients: int, budget: int,
             seconds: float) -> dict[str, Any]:
    """``clients`` threads share a budget of requests; latency per request, errors and wrong labels."""
    lock = threading.Lock()
    state = {"next": 0, "errors": 0, "wrong": 0}
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                i = state["next"]
                if i >= budget:
                    return
                state["next"] += 1
            word, wav = clips[i % len(clips)]
            t0 = time.perf_counter()
            try:
                label = call(wav)
            except Exception:  # noqa: BLE001 - counted and reported as the error rate
                with lock:
                    state["errors"] += 1
                continue
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                state["wrong"] += label != word

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    done = len(latencies) + state["errors"]
    return {"requests": done, "seconds": elapsed, "req_per_s": len(latencies) / elapsed,
            "error_rate": state["errors"] / max(done, 1), "errors": state["errors"], "wrong": state["wrong"],
            **latency_summary(latencies)}


def run(config: BenchConfig) -> list[dict[str, Any]]:
    clips = [(p.stem, p.read_bytes()) for p in sorted(CLIPS.glob("*.wav"))]
    rows: list[dict[str, Any]] = []
    for batching in config.batching:
        server = ServerProcess(config.model, config.max_batch_size if batching == "on" else 1, config.max_delay_ms)
        try:
            clients = {"grpc": grpc_client(server.grpc_target), "rest": rest_client(server.gateway_url)}
            for transport in config.transports:
                run_cell(clients[transport], clips, 4, 4 * len(clips), 10)  # warm-up: connections, interpreters
                for n in config.concurrency:
                    calls0, rows0 = server.batches()
                    cell = run_cell(clients[transport], clips, n, config.requests, config.seconds)
                    calls, rows_run = (a - b for a, b in zip(server.batches(), (calls0, rows0)))
                    row = {"batching": batching, "transport": transport, "clients": n, **cell,
                           "mean_batch": rows_run / calls if calls else 1.0, "rss_mb": server.rss_mb()}
                    rows.append(row)
                    print(format_table([row], COLUMNS, 10).splitlines()[-1], flush=True)
        finally:
            server.stop()
    return rows


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "big_int8.tflite")
    ap.add_argument("--concurrency", default="1,8,32,128", help="comma-separated client thread counts")
    ap.add_argument("--requests", type=int, default=500, help="requests per cell (at most)")
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds per cell (at most)")
    ap.add_argument("--transports", default="grpc,rest")
    ap.add_argument("--batching", default="on,off")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-delay-ms", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_server.json",
                    help="JSON results (default: results/bench_server.json)")
    a = ap.parse_args(argv)
    return BenchConfig(a.model, tuple(int(c) for c in a.concurrency.split(",")), a.requests, a.seconds,
                       tuple(a.transports.split(",")), tuple(a.batching.split(",")), a.max_batch_size,
                       a.max_delay_ms, a.out)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    if not config.model.is_file():
        sys.exit(f"{config.model} not found: train it (make train) or pass --model")
    print(format_table([], COLUMNS, 10))
    rows = run(config)
    path = write_results(config.out, {"config": {k: repo_relative(v) if isinstance(v, Path) else v
                                                 for k, v in dataclasses.asdict(config).items()},
                                      "notes": "loopback; client threads and the server share the machine's "
                                               "cores (see environment.loadavg_1m); requests are 1 s WAV clips "
                                               "(MFCC on the server); mean_batch = rows per model invocation",
                                      "results": rows})
    print(f"\n{format_table(rows, COLUMNS)}\n\nwrote {path}")
    if any(r["errors"] for r in rows):
        sys.exit("some requests failed: the error rate must be 0")


if __name__ == "__main__":
    main()
