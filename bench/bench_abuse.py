"""`python -m bench.bench_abuse`: kws-server under the two resource attacks of issue 10.

1. **Idle streams.** ``--streams`` (64) PredictStream calls are opened and never sent a request; then one
   client makes ``--requests`` (300) unary Predict calls, one after another, and their p50/p99 latency
   is measured (target p99 < 100 ms). Before the limits, 64 idle streams held all 64 gRPC threads and a
   fresh Predict timed out. The bench also records how many streams were refused at once
   (RESOURCE_EXHAUSTED, beyond ``--max-streams``) and when the held ones were ended (``--stream-idle-s``).
2. **Half-sent HTTP requests.** ``--connections`` (300) sockets each send a request head with
   ``Content-Length: 1000`` and 500 bytes of body (or half a request head), then nothing; the bench measures
   how long until the gateway closes each one, and what it answered (408 for a late body). A PUT / sent
   while they are open shows the gateway still serves.

The server is a ``python -m kws_rpc.serving.server`` child process with its gateway and default limits (the flags
given here are passed on). Writes results/bench_abuse.json (``--commit``: bench/results/abuse.json) and
prints a table. A benchmark, not a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import re
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import requests

from bench.common import RESULTS, format_table, latency_summary, write_results
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.proto.kws.v1 import kws_pb2_grpc as pb_grpc
from kws_rpc.serving.limits import Limits
from kws_rpc.wire.senml import spec_body_for_wav
from tests.support.server_process import ServerProcess

REPO = Path(__file__).resolve().parent.parent
CLIP = REPO / "tests" / "fixtures" / "clips" / "yes.wav"
COMMITTED = REPO / "bench" / "results" / "abuse.json"
COLUMNS = ["attack", "count", "refused_at_once", "held", "held_ended_s", "p50_ms", "p99_ms", "closed",
           "closed_p50_s", "closed_max_s", "answered_408", "server_ok", "rss_mb"]


def idle_streams(server: ServerProcess, wav: bytes, streams: int, requests_n: int) -> dict[str, Any]:
    release = threading.Event()

    def nothing() -> Iterator[pb.PredictRequest]:
        release.wait()
        return
        yield  # a generator that sends no request until released

    ends: list[tuple[str, float]] = []
    lock = threading.Lock()
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.KeywordSpottingStub(channel)
        request = pb.PredictRequest(audio=pb.Audio(wav=wav))
        stub.Predict(request, timeout=30)  # warm up (interpreters, channel)
        opened = time.monotonic()
        calls = [stub.PredictStream(nothing(), timeout=600) for _ in range(streams)]

        def watch(call: Any) -> None:
            try:
                for _ in call:
                    pass
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            with lock:
                ends.append((code, time.monotonic() - opened))

        watchers = [threading.Thread(target=watch, args=(c,), daemon=True) for c in calls]
        for w in watchers:
            w.start()
        time.sleep(1.0)  # let every stream reach the server (and the refused ones be refused)
        with lock:
            refused = sum(1 for code, _ in ends if code == "RESOURCE_EXHAUSTED")
        latencies, errors = [], 0
        for _ in range(requests_n):
            t0 = time.perf_counter()
            try:
                stub.Predict(request, timeout=10)
                latencies.append(time.perf_counter() - t0)
            except grpc.RpcError:
                errors += 1
        rss = server.rss_mb()
        for w in watchers:  # the held streams end at the server's idle timeout
            w.join(600)
        release.set()
    held = [t for code, t in ends if code != "RESOURCE_EXHAUSTED"]
    lat = latency_summary(latencies)
    return {"attack": f"{streams} idle PredictStream", "count": requests_n, "refused_at_once": refused,
            "held": len(held), "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "unary_errors": errors,
            "held_ended": sorted({code for code, _ in ends if code != "RESOURCE_EXHAUSTED"}),
            "held_ended_s": round(float(np.median(held)), 2) if held else None,
            "server_ok": errors == 0, "rss_mb": round(rss, 1)}


def half_sent(server: ServerProcess, wav: bytes, connections: int, what: str) -> dict[str, Any]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    if what == "body":
        data = b"PUT / HTTP/1.1\r\nHost: kws\r\nContent-Length: 1000\r\n\r\n" + b"{" * 500
    else:
        data = b"PUT / HTTP/1.1\r\nHost: kws\r\nContent-Le"
    sel = selectors.DefaultSelector()
    sent: dict[socket.socket, float] = {}
    for _ in range(connections):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(data)
        s.setblocking(False)
        sent[s] = time.monotonic()
        sel.register(s, selectors.EVENT_READ, bytearray())
    # the gateway still serves while they are open
    r = requests.put(server.url + "/", json=spec_body_for_wav(wav, "bench"), timeout=30)
    server_ok = r.status_code == 200
    rss = server.rss_mb()
    closed: list[float] = []
    answered_408 = 0
    deadline = time.monotonic() + 120
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            s, buf = key.fileobj, key.data
            try:
                chunk = s.recv(65536)  # type: ignore[union-attr]
            except OSError:
                chunk = b""
            if chunk:
                buf += chunk
                continue
            closed.append(time.monotonic() - sent[s])  # type: ignore[index]
            answered_408 += buf.startswith(b"HTTP/1.1 408 ")
            sel.unregister(s)
            s.close()  # type: ignore[union-attr]
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    return {"attack": f"{connections} half-sent {'bodies' if what == 'body' else 'heads'}", "count": connections,
            "closed": len(closed), "closed_p50_s": round(float(np.median(closed)), 2) if closed else None,
            "closed_max_s": round(max(closed), 2) if closed else None, "answered_408": answered_408,
            "server_ok": server_ok, "rss_mb": round(rss, 1)}


def main(argv: list[str] | None = None) -> None:
    d = Limits()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "big.tflite")
    ap.add_argument("--streams", type=int, default=64, help="idle PredictStream calls (default %(default)s)")
    ap.add_argument("--requests", type=int, default=300, help="unary Predict calls measured (default %(default)s)")
    ap.add_argument("--connections", type=int, default=300, help="half-sent HTTP requests (default %(default)s)")
    ap.add_argument("--max-streams", type=int, default=d.max_streams)
    ap.add_argument("--stream-idle-s", type=float, default=d.stream_idle_s)
    ap.add_argument("--http-header-timeout-s", type=float, default=d.http_header_timeout_s)
    ap.add_argument("--http-body-timeout-s", type=float, default=d.http_body_timeout_s)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_abuse.json")
    ap.add_argument("--commit", action="store_true", help=f"write the committed {COMMITTED.relative_to(REPO)}")
    a = ap.parse_args(argv)
    limits = Limits(max_streams=a.max_streams, stream_idle_s=a.stream_idle_s,
                    http_header_timeout_s=a.http_header_timeout_s, http_body_timeout_s=a.http_body_timeout_s)
    wav = CLIP.read_bytes()
    server = ServerProcess(a.model, "--max-streams", str(limits.max_streams), "--stream-idle-s",
                           str(limits.stream_idle_s), "--http-header-timeout-s", str(limits.http_header_timeout_s),
                           "--http-body-timeout-s", str(limits.http_body_timeout_s))
    rows = []
    try:
        start_rss = server.rss_mb()
        rows.append(idle_streams(server, wav, a.streams, a.requests))
        print(format_table(rows[-1:], COLUMNS), flush=True)
        for what in ("body", "head"):
            rows.append(half_sent(server, wav, a.connections, what))
            print(format_table(rows[-1:], COLUMNS), flush=True)
        end_rss = server.rss_mb()
        errors = [line for line in server.log if re.match(r"^\S+ \S+ (ERROR|CRITICAL) ", line) or "Traceback" in line]
    finally:
        server.stop()
    print()
    print(format_table(rows, COLUMNS))
    print(f"limits: {limits.max_streams} streams, idle {limits.stream_idle_s:g} s, HTTP head "
          f"{limits.http_header_timeout_s:g} s / body {limits.http_body_timeout_s:g} s; server RSS "
          f"{start_rss:.0f} -> {end_rss:.0f} MB, {len(errors)} ERROR lines in its log")
    out = write_results(COMMITTED if a.commit else a.out, {
        "model": str(a.model.resolve().relative_to(REPO)) if a.model.resolve().is_relative_to(REPO) else a.model.name,
        "limits": {"max_streams": limits.max_streams, "stream_idle_s": limits.stream_idle_s,
                   "http_header_timeout_s": limits.http_header_timeout_s,
                   "http_body_timeout_s": limits.http_body_timeout_s},
        "rows": rows, "server_rss_mb": {"start": round(start_rss, 1), "end": round(end_rss, 1)},
        "server_error_lines": len(errors)})
    print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


if __name__ == "__main__":
    main()
