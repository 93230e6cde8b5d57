"""`make demo`: the whole system end to end on embedded defaults, on this machine.

1. evaluates every shipped model on the test split (table);
2. starts the real gRPC server hosting the big model, with its REST gateway, on free loopback ports;
3. runs the edge cascade over the 800 test clips in REST spec mode (SenML+JSON, base64 WAV: 16-bit PCM
   as the reference sends it, then 4-bit IMA ADPCM) and in gRPC mode with compressed log-mel payloads;
   prints accuracy and communication cost;
4. stops the server (SIGTERM, graceful) and runs cooperative inference over MQTT with the embedded broker
   and one worker per ensemble member.

Every step is a separate process started with the same commands a user would type. Everything it writes
goes under results/ (gitignored): the committed figures in bench/results/ and models/ stay as they are.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the checkout's bench package, for its process helpers

from bench.common import BIN, wait_ready  # noqa: E402  (BIN: the venv's console scripts, what a user types)
from tests.support.network import free_port  # noqa: E402


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def command(args: list[str]) -> list[str]:
    """kws-* commands run as the venv's console scripts; anything else (a lab module) with -m."""
    return [str(BIN / args[0]), *args[1:]] if args[0].startswith("kws-") else [sys.executable, *args]


def run(*args: str) -> None:
    print("$ " + (" ".join(args) if args[0].startswith("kws-") else "python " + " ".join(args)), flush=True)
    subprocess.run(command(list(args)), cwd=ROOT, check=True)


def commands(limit: int | None, grpc_port: int, http_port: int) -> dict[str, list[str]]:
    """The python command line of each step (after ``python``); every report they write is under results/."""
    n = ["--limit", str(limit)] if limit else []
    return {
        "eval": ["kws-eval", "--latency-clips", "100", "--out", "results/eval.json"],
        "server": ["kws-server", "--model", "models/big_int8.tflite", "--port", str(grpc_port),
                   "--gateway-port", str(http_port), "--log-level", "WARNING"],
        "client-rest": ["kws-edge", "eval", "--transport", "rest", "--url", f"http://127.0.0.1:{http_port}/",
                        "--report", "results/edge_rest.json", *n],
        "client-rest-adpcm": ["kws-edge", "eval", "--transport", "rest", "--wav", "ima-adpcm",
                              "--url", f"http://127.0.0.1:{http_port}/", "--report", "results/edge_rest_adpcm.json", *n],
        "client-grpc": ["kws-edge", "eval", "--transport", "grpc", "--encoding", "logmel-q5z",
                        "--grpc", f"127.0.0.1:{grpc_port}", "--report", "results/edge_grpc_logmel-q5z.json", *n],
        "coop": ["-m", "kws_rpc.lab.coop_demo", "--split", "test", "--report", "results/coop_report.json", *n],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, help="first N test clips only (a quick look)")
    ap.add_argument("--skip-eval", action="store_true", help="skip the model evaluation table")
    args = ap.parse_args(argv)
    grpc_port, http_port = free_port(), free_port()
    cmd = commands(args.limit, grpc_port, http_port)

    if not args.skip_eval:
        step("1/4 shipped models on the 800-clip test split")
        run(*cmd["eval"])

    step(f"2/4 gRPC server (big model) on 127.0.0.1:{grpc_port}, REST gateway on 127.0.0.1:{http_port}")
    server = subprocess.Popen(command(cmd["server"]), cwd=ROOT)
    try:
        try:
            wait_ready(f"http://127.0.0.1:{http_port}/readyz", server)
        except RuntimeError as e:
            raise SystemExit(f"{e}; see the server's log above") from None
        step("3/4 edge cascade: little on every clip, big when unsure")
        run(*cmd["client-rest"])
        run(*cmd["client-rest-adpcm"])
        run(*cmd["client-grpc"])
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    step("4/4 cooperative inference over MQTT (embedded broker, one worker per ensemble member)")
    run(*cmd["coop"])
    print("\nreports: results/*.json (the committed figures are in bench/results/ and models/cascade.json)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
