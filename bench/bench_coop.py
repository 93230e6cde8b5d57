"""Cooperative inference, end to end: 800 test clips through N workers on the embedded amqtt broker and on
mosquitto. Workers are separate processes (`kws-worker`), as deployed; the client is
this process. Each configuration is warmed up (first messages, interpreter set-up) before the timed run.

    python -m bench.bench_coop [--workers 3 5] [--brokers amqtt mosquitto] [--limit N]

Writes results/bench_coop.json (``make bench-coop-commit``: the committed bench/results/coop.json) and prints
a table. Target: 800 clips in <= 1.5 s, 3 workers, a stock mosquitto (`mosquitto -p PORT`).
With only 3 member models, 5 workers repeat members under other worker ids.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from bench.common import RESULTS, format_table, write_results
from edge.cascade import repo_relative
from kws_rpc.lab.coop import default_members
from kws_rpc.lab.coop_report import report
from kws_rpc.lab.data import find_dataset, load_split
from kws_rpc.mqtt.broker import EmbeddedBroker
from kws_rpc.mqtt.connection import BrokerSettings
from kws_rpc.mqtt.coop import CoopClient, CoopConfig
from tests.support.mosquitto import Mosquitto

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ("broker", "workers", "clips", "e2e_s", "publish_to_decided_s", "clips/s", "msgs/s", "B/clip", "B/vote", "SenML B/clip",
           "SenML B/vote", "missing", "lost", "acc_mean_%", "window", "worker_rss_mb")


@contextlib.contextmanager
def broker(kind: str) -> Iterator[str]:
    if kind == "mosquitto":
        with Mosquitto() as m:
            yield m.url
    else:
        with EmbeddedBroker() as b:
            yield b.url


@contextlib.contextmanager
def worker_processes(models: Sequence[str], count: int, url: str, dep: str) -> Iterator[list[subprocess.Popen]]:
    procs = [subprocess.Popen([sys.executable, "-m", "kws_rpc.mqtt.worker", "--model", models[i % len(models)],
                               "--broker", url, "--deployment", dep, "--worker-id", f"w{i}", "--log-level",
                               "WARNING"], cwd=REPO, stdout=subprocess.DEVNULL)
             for i in range(count)]
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def measure(kind: str, count: int, models: Sequence[str], audio, labels, names) -> dict[str, Any]:
    dep = f"bench{uuid.uuid4().hex[:6]}"
    with broker(kind) as url, worker_processes(models, count, url, dep) as procs:
        cfg = CoopConfig(BrokerSettings.from_url(url), dep, client_id="bench", min_workers=count,
                         discover_s=0.3, discover_timeout_s=60, progress=False)
        client = CoopClient(cfg).start()
        try:
            client.run(audio[:32])  # warm-up: connections, interpreters, first-message latency
            run = client.run(audio)
            rep = report(run, client.label_indices(labels), names, client.labels(), "mean")
            worker_rss = max(psutil.Process(p.pid).memory_info().rss for p in procs) / 2**20
        finally:
            client.stop()
    return {
        "broker": kind, "workers": count, "clips": rep["clips"], "e2e_s": f"{rep['end_to_end_s']:.2f}",
        "publish_to_decided_s": f"{rep['published_to_decided_s']:.2f}",
        "clips/s": rep["clips_per_s"], "msgs/s": rep["messages_per_s"], "B/clip": rep["bytes_per_clip_message"],
        "B/vote": rep["bytes_per_prediction_message"], "SenML B/clip": rep.get("senml_json_base64_f32_clip_bytes"),
        "SenML B/vote": rep.get("senml_json_prediction_bytes"), "missing": rep["missing_predictions"],
        "acc_mean_%": round(100 * rep["per_policy_accuracy"]["mean"], 3), "lost": rep["lost"],
        "worker_rss_mb": round(worker_rss, 1), "window": client.window,
        "detail": {k: v for k, v in rep.items() if k != "per_clip"},
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    env = os.environ.get("KWS_TEST_MEMBERS")
    p.add_argument("--models", nargs="+", default=env.split(",") if env else default_members())
    p.add_argument("--workers", nargs="+", type=int, default=[3, 5])
    p.add_argument("--brokers", nargs="+", default=["amqtt", "mosquitto"], choices=("amqtt", "mosquitto"))
    p.add_argument("--limit", type=int, default=0, help="first N test clips (0 = all 800)")
    p.add_argument("--out", default=str(RESULTS / "bench_coop.json"), help="JSON results (default: "
                   "results/bench_coop.json)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    audio, labels, names = load_split("test", find_dataset())
    if args.limit:
        audio, labels, names = audio[: args.limit], labels[: args.limit], names[: args.limit]
    rows = []
    for kind in args.brokers:
        if kind == "mosquitto" and not Mosquitto.available():
            print("mosquitto not installed: skipped", file=sys.stderr)
            continue
        for count in args.workers:
            row = measure(kind, count, args.models, audio, labels, names)
            rows.append(row)
            print(f"{kind}, {count} workers: {row['e2e_s']} s", flush=True)
    print(format_table(rows, COLUMNS))
    out = write_results(args.out, {"models": [repo_relative(m) for m in args.models], "target": "800 clips <= 5 s, 3 workers, mosquitto",
                                   "runs": rows})
    print(f"results: {out}")


if __name__ == "__main__":
    main()
