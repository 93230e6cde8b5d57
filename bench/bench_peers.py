"""`make bench-peers`: kws against the general-purpose model servers it competes with, on the same model.

KServe 0.21 and MLServer 1.7 serve the same .tflite through kws's own model and feature code
(bench/peers/), each in its own venv (requirements/peers-*.txt), tuned as a user would tune them: one
BLAS thread, access logs off, 1 or 2 workers. kws serves it as `kws-server --processes N`, with its own
defaults (which also keep the C heap's freed memory: kws_rpc.model.native; the peers get the same with
MALLOC_MMAP_THRESHOLD_=16777216 MALLOC_TRIM_THRESHOLD_=33554432 in this command's environment). The same load
drives all three: every client on its own connection, from two client processes (bench/load.py), for
C = 1, 32 and 128 clients, on three payloads:

- grpc-wav: one 16-bit WAV per request (kws: kws.v1 Predict with Audio.wav; peers: V2 ModelInfer, a BYTES
  tensor in raw_input_contents);
- grpc-features: float32 log-mel 49x40 (kws: a FLOAT32 Tensor; peers: an FP32 tensor, raw);
- rest-wav: the WAV over HTTP/JSON (kws: the course's SenML PUT, base64; peers: V2 JSON, base64 BYTES).

Per cell: requests per second, p50/p99 latency, errors, the server's CPU time per request (every process
of it, from psutil) and its RSS; beside it the floor, what decoding, features and prediction cost per
request in this process (tuned as a kws server is), measured in the same run; what grpc.aio itself adds
per call: python -m bench.empty_grpc. Servers are interleaved within each pass, and the
summary is the mean of the passes at 32 clients, each server at its best process count.
Writes results/bench_peers.json.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (RESULTS, format_table, latency_summary, process_tree, tree_cpu_seconds, tree_rss_mb, wait_ready,
                          write_results)
from bench.floor import floor_ms
from edge.cascade import repo_relative
from bench.load import Job, drive
from kws_rpc.wire.encodings import build_request
from kws_rpc.audio.wav import decode_wav
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.wire.senml import spec_body_for_wav
from kws_rpc.model.native import tune_process
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from tests.support.network import free_port, wait_listening

REPO = Path(__file__).resolve().parent.parent
CLIPS = REPO / "tests" / "fixtures" / "clips"
PAYLOADS = ("grpc-wav", "grpc-features", "rest-wav")
FLOOR = {"grpc-wav": "wav", "grpc-features": "features", "rest-wav": "wav-base64"}  # bench.floor's kinds
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclasses.dataclass
class Server:
    kind: str  # kws | kws-v2 | kserve | mlserver | empty (bench.empty_grpc)
    processes: int
    proc: subprocess.Popen
    grpc_target: str
    http_url: str
    workdir: Path | None = None

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def rss_mb(self) -> float:
        return tree_rss_mb(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            for p in process_tree(self.proc.pid):
                p.kill()
            self.proc.wait()


def start(kind: str, processes: int, model: Path, venvs: dict[str, Path]) -> Server:
    grpc_port, http_port = free_port(), free_port()
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(REPO)}
    workdir = None
    if kind in ("kws", "kws-v2"):
        cmd = [sys.executable, "-m", "kws_rpc.serving.server", "--model", str(model), "--port", str(grpc_port),
               "--gateway-port", str(http_port), "--processes", str(processes), "--log-level", "WARNING"]
        ready = f"http://127.0.0.1:{http_port}/readyz"
    elif kind == "kserve":
        cmd = [str(venvs["kserve"] / "bin" / "python"), "-m", "bench.peers.kserve_kws", "--model", str(model),
               "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--workers", str(processes)]
        ready = f"http://127.0.0.1:{http_port}/v2/health/ready"
    else:
        from bench.peers.mlserver_kws import write_settings

        workdir = Path(tempfile.mkdtemp(prefix="kws-mlserver-"))
        write_settings(workdir, model, http_port, grpc_port, processes)
        cmd = [str(venvs["mlserver"] / "bin" / "mlserver"), "start", str(workdir)]
        ready = f"http://127.0.0.1:{http_port}/v2/health/ready"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(kind, processes, proc, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", workdir)
    try:
        wait_listening("127.0.0.1", grpc_port, 120)
        wait_ready(ready, proc)
    except BaseException:
        server.stop()
        raise
    return server


def kws_bodies(model: KwsModel) -> dict[str, list[tuple[str, bytes]]]:
    out: dict[str, list[tuple[str, bytes]]] = {p: [] for p in PAYLOADS}
    for i, path in enumerate(sorted(CLIPS.glob("*.wav"))):
        wav = path.read_bytes()
        audio, _ = decode_wav(wav)
        out["grpc-wav"].append((path.stem, pb.PredictRequest(request_id=str(i), audio=pb.Audio(wav=wav))
                                .SerializeToString()))
        out["grpc-features"].append((path.stem, build_request(audio, "logmel-f32", str(i), model.feature_config)
                                     .SerializeToString()))
        out["rest-wav"].append((path.stem, json.dumps(spec_body_for_wav(wav, "bench")).encode()))
    return out


def peer_bodies(model: KwsModel, venv: Path) -> dict[str, list[tuple[str, bytes]]]:
    clips = sorted(CLIPS.glob("*.wav"))
    with tempfile.TemporaryDirectory() as tmp:
        feats = Path(tmp) / "features.npy"
        np.save(feats, np.stack([model.features(decode_wav(p.read_bytes())[0]) for p in clips]))
        r = subprocess.run([str(venv / "bin" / "python"), "-m", "bench.peers.v2_requests", model.name, str(feats),
                            *map(str, clips)], cwd=REPO, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    raw = json.loads(r.stdout)
    return {p: [(w, base64.b64decode(b) if p.startswith("grpc") else b.encode()) for w, b in raw[p]] for p in PAYLOADS}


def cell(server: Server, payload: str, bodies: list[tuple[str, bytes]], clients: int, seconds: float) -> dict[str, Any]:
    grpc = payload.startswith("grpc")
    if server.kind == "kws":  # kws's own protocols; kws-v2 is kws driven exactly as the peers are
        job = Job("grpc" if grpc else "rest", server.grpc_target if grpc else server.http_url, bodies, clients,
                  10**9, seconds)
    else:
        http = ("POST", "/v2/models/big_int8/infer", (("Content-Type", "application/json"),))
        job = Job("grpc" if grpc else "rest", server.grpc_target if grpc else server.http_url, bodies, clients,
                  10**9, seconds, grpc_method=MODEL_INFER, http=http, check="status")
    return {"server": server.kind, "processes": server.processes, "payload": payload, "clients": clients,
            **measure(server, job)}


def measure(server: Server, job: Job) -> dict[str, Any]:
    """``job`` driven from two client processes: req/s, latencies, errors, wrong answers, and the server's CPU
    per request and RSS."""
    cpu0 = server.cpu_seconds()
    out = drive(job, processes=2)
    cpu = server.cpu_seconds() - cpu0
    n = len(out["latencies"])
    return {"req_per_s": n / out["elapsed"], **latency_summary(out["latencies"]), "errors": out["errors"],
            "wrong": out["wrong"], "cpu_ms_per_req": 1000 * cpu / max(n, 1), "rss_mb": server.rss_mb()}


def summarize(rows: list[dict[str, Any]], clients: int = 32) -> list[dict[str, Any]]:
    """Per payload: each server at its best process count (mean of passes), and kws / best peer."""
    out = []
    for payload in PAYLOADS:
        best: dict[str, dict[str, Any]] = {}
        for kind in ("kws", "kws-v2", "kserve", "mlserver"):
            by_procs: dict[int, list[dict]] = {}
            for r in rows:
                if r["server"] == kind and r["payload"] == payload and r["clients"] == clients:
                    by_procs.setdefault(r["processes"], []).append(r)
            if not by_procs:
                continue
            means = {p: {k: float(np.mean([r[k] for r in rs])) for k in ("req_per_s", "p99_ms", "cpu_ms_per_req")}
                     for p, rs in by_procs.items()}
            p = max(means, key=lambda q: means[q]["req_per_s"])
            best[kind] = {"processes": p, **means[p]}
        peers = [best[k] for k in ("kserve", "mlserver") if k in best]
        row = {"payload": payload, **{f"{k} req/s ({v['processes']}p)": v["req_per_s"] for k, v in best.items()}}
        if peers:
            top = max(peers, key=lambda v: v["req_per_s"])
            if "kws" in best:
                row["kws / best peer"] = best["kws"]["req_per_s"] / top["req_per_s"]
            if "kws-v2" in best:
                row["kws V2 / best peer"] = best["kws-v2"]["req_per_s"] / top["req_per_s"]
        out.append(row)
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Per payload, req/s and server CPU per request against clients, each server at its best process
    count (at 32 clients), the mean of the passes; the floor dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = {(r["payload"], k.split(" ")[0]): int(k.rsplit("(", 1)[1][:-2]) for r in summarize(rows)
            for k in r if k.endswith("p)")}
    fig, axes = plt.subplots(2, len(PAYLOADS), figsize=(4 * len(PAYLOADS), 6), sharex=True)
    for col, payload in enumerate(PAYLOADS):
        for (p, kind), procs in sorted(best.items()):
            if p != payload:
                continue
            mine = [r for r in rows if (r["payload"], r["server"], r["processes"]) == (payload, kind, procs)]
            clients = sorted({r["clients"] for r in mine})
            for row, key in enumerate(("req_per_s", "cpu_ms_per_req")):
                ys = [np.mean([r[key] for r in mine if r["clients"] == c]) for c in clients]
                axes[row][col].plot(clients, ys, marker="o", label=f"{kind} ({procs}p)")
        floor = np.mean([r["floor_ms"] for r in rows if r["payload"] == payload])
        axes[1][col].axhline(floor, color="gray", linestyle="--", label="floor")
        axes[0][col].set_title(payload)
        axes[1][col].set_xlabel("concurrent clients")
        axes[1][col].set_xscale("log", base=2)
        axes[1][col].legend(fontsize=7)
    axes[0][0].set_ylabel("requests / s")
    axes[1][0].set_ylabel("server CPU ms / request")
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "big_int8.tflite")
    ap.add_argument("--servers", default="kws,kws-v2,kserve,mlserver",
                    help="kws (its own protocols: kws.v1 gRPC, the SenML body over REST), kws-v2 (kws over the "
                         "Open Inference Protocol, the peers' very requests), kserve, mlserver")
    ap.add_argument("--processes", default="1,2", help="process (worker) counts per server")
    ap.add_argument("--clients", default="1,32,128")
    ap.add_argument("--payloads", default=",".join(PAYLOADS))
    ap.add_argument("--seconds", type=float, default=10.0, help="per cell")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--venv-kserve", type=Path, default=REPO / ".venv-peers-kserve")
    ap.add_argument("--venv-mlserver", type=Path, default=REPO / ".venv-peers-mlserver")
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_peers.json")
    a = ap.parse_args(argv)
    tune_process()  # the floor is measured as every server process runs: one BLAS thread, a heap that keeps freed memory
    venvs = {"kserve": a.venv_kserve, "mlserver": a.venv_mlserver}
    servers = a.servers.split(",")
    payloads = a.payloads.split(",")
    model = KwsModel(a.model)
    bodies = {"kws": kws_bodies(model)}
    if any(s != "kws" for s in servers):
        bodies["peer"] = peer_bodies(model, venvs["kserve"])
    rows, floors = [], []
    for n in range(a.passes):
        floor = floor_ms(model, sorted(CLIPS.glob("*.wav")))
        floors.append({payload: floor[kind] for payload, kind in FLOOR.items()})
        for kind in servers:
            for procs in map(int, a.processes.split(",")):
                server = start(kind, procs, a.model, venvs)
                try:
                    for payload in payloads:
                        b = bodies["kws" if kind == "kws" else "peer"][payload]
                        cell(server, payload, b, 4, 2.0)  # warm-up
                        for c in map(int, a.clients.split(",")):
                            row = {"pass": n, **cell(server, payload, b, c, a.seconds), "floor_ms": floors[-1][payload]}
                            rows.append(row)
                            print(format_table([row], ["pass", "server", "processes", "payload", "clients", "req_per_s",
                                                       "p50_ms", "p99_ms", "cpu_ms_per_req", "floor_ms", "errors"]),
                                  flush=True)
                finally:
                    server.stop()
    summary = summarize(rows)
    print(format_table(summary, list(dict.fromkeys(k for r in summary for k in r))))
    write_results(a.out, {"model": repo_relative(a.model), "seconds": a.seconds, "passes": a.passes, "floors_ms": floors,
                          "tuning": {"all": "one BLAS thread (OPENBLAS/OMP/MKL_NUM_THREADS=1)",
                                     "kws": "its defaults (kws_rpc.model.native): also a heap that keeps freed memory",
                                     "kserve": "ModelServer(workers=N, access_log_format=None, enable_latency_logging=False)",
                                     "mlserver": "parallel_workers=N, metrics off, logging WARNING"},
                          "rows": rows, "summary_32_clients": summary})
    plot(rows, a.out.with_suffix(".png"))
    print(f"wrote {a.out} and {a.out.with_suffix('.png')}")
    return 0 if not any(r["errors"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
