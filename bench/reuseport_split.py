"""How `kws-server --processes N` shares 32 long-lived gRPC connections, and what that does to the p99.

The processes listen on one port with SO_REUSEPORT: the kernel hands each new connection to a process by a
hash of its addresses and ports, so 32 connections split like coin tosses (16/16 on average, 12/20 often),
and the clients of the busier process wait longer on every request. This drives the same load as
bench-peers (32 clients on their own connections, two client processes, the same request bodies) at two
setups, interleaved A B B A: ``reuseport``, kws-server --processes 2, and ``balanced``, two one-process
kws-servers on two ports with the clients alternating between them (exactly 16 connections each). For
each round: req/s, p50/p99, the split the kernel made (from ``ss``, when installed), and the spread of the
clients' mean latencies.

    python -m bench.reuseport_split [--payload grpc-features] [--rounds 4] [--seconds 10]
        -> results/reuseport_split.json
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_peers import PAYLOADS, REPO, kws_bodies, start
from bench.common import RESULTS, format_table, latency_summary, write_results
from bench.load import Job, drive
from kws_rpc.model.kws_model import KwsModel


def split(port: int) -> list[int]:
    """Established connections on ``port``, counted per owning process (largest first); [] without ss."""
    if shutil.which("ss") is None:
        return []
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True,
                         text=True).stdout
    return sorted(collections.Counter(re.findall(r"pid=(\d+)", out)).values(), reverse=True)


def round_(kind: str, model: Path, bodies: list[tuple[str, bytes]], clients: int, seconds: float) -> dict[str, Any]:
    servers = [start("kws", 2, model, {})] if kind == "reuseport" else [start("kws", 1, model, {}) for _ in range(2)]
    seen: list[int] = []
    try:
        target = ",".join(s.grpc_target for s in servers)
        # the kernel's split, read halfway through, while every connection is open
        timer = threading.Timer(seconds / 2, lambda: seen.extend(split(int(servers[0].grpc_target.rsplit(":", 1)[1]))))
        timer.start()
        out = drive(Job("grpc", target, bodies, clients, 10**9, seconds), processes=2)
        timer.cancel()
    finally:
        for s in servers:
            s.stop()
    means = np.array(out["client_mean_s"]) * 1000
    return {"setup": kind, "req_per_s": len(out["latencies"]) / out["elapsed"], **latency_summary(out["latencies"]),
            "errors": out["errors"],
            "connections_per_process": seen if kind == "reuseport" else [clients // 2, clients - clients // 2],
            "client_mean_ms_min": float(means.min()), "client_mean_ms_max": float(means.max())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "big_int8.tflite")
    ap.add_argument("--payload", default="grpc-features", choices=[p for p in PAYLOADS if p.startswith("grpc")])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0, help="per round")
    ap.add_argument("--rounds", type=int, default=4, help="per setup, interleaved A B B A")
    ap.add_argument("--out", type=Path, default=RESULTS / "reuseport_split.json")
    a = ap.parse_args(argv)
    bodies = kws_bodies(KwsModel(a.model))[a.payload]
    rows = []
    for r in range(a.rounds):
        for kind in ("balanced", "reuseport") if r % 2 == 0 else ("reuseport", "balanced"):
            rows.append({"round": r, **round_(kind, a.model, bodies, a.clients, a.seconds)})
            print(format_table(rows[-1:], list(rows[-1])), file=sys.stderr, flush=True)
    print(format_table(rows, list(rows[0])))
    summary = {kind: {"p99_ms_mean": float(np.mean([x["p99_ms"] for x in rows if x["setup"] == kind])),
                      "req_per_s_mean": float(np.mean([x["req_per_s"] for x in rows if x["setup"] == kind]))}
               for kind in ("reuseport", "balanced")}
    for kind, s in summary.items():
        print(f"{kind}: p99 {s['p99_ms_mean']:.1f} ms, {s['req_per_s_mean']:.0f} req/s (mean of {a.rounds} rounds)")
    write_results(a.out, {"model": a.model.name, "payload": a.payload, "clients": a.clients, "seconds": a.seconds,
                          "rows": rows, "summary": summary})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
