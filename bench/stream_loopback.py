"""The Pi listening with the server verifying, end to end on loopback.

`kws-edge listen --input FILE.wav --verify grpc` (the shipped listener, verifier and settings) hears the
test keyword stream that `make bench-stream` builds at 10 dB (the same seed, the same audio), with a real
`kws-server` serving big_int8 and the verifier on loopback. Reports, from the events the program printed:
hits, false accepts in the keyword stream, the verifications and their outcome, and the latency from the
end of each keyword's 1 s clip to its event, for the events the server decided (the settle hops and the
round trip included) and for those the little decided alone.

The file is read faster than real time, so a verification can wait behind the one before it: the round
trips measured here are if anything longer than a live microphone's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import wave
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_stream import SNRS, score
from bench.common import BIN, RESULTS, format_table, wait_ready, write_results
from edge.listen import Shipped
from kws_rpc.lab.data import find_dataset
from kws_rpc.lab.streams import RATE, keyword_stream, material
from kws_rpc.model.shipped import models_dir
from tests.support.network import free_port


def test_stream(root: Path, seed: int, snr: float = 10.0) -> Any:
    """The keyword stream bench-stream scores at ``snr`` (built in its order, from the same generator)."""
    m = material("test", root, seed)
    for s in SNRS:
        stream = keyword_stream(m["audio"], m["labels"], m["recordings"], m["ref"], s, m["rng"])
        if s == snr:
            return stream
    raise ValueError(f"bench-stream builds no stream at {snr} dB (it builds {SNRS})")


def write_wav(path: Path, audio: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def latencies(events: list[dict], keywords: list[tuple[float, float, str]]) -> dict[str, Any]:
    """The events scored as bench-stream scores them (matched by when the little detected them); latency =
    the event's time minus its keyword's clip end, split by who decided."""
    s = score([(e["detected_t"], e["label"]) for e in events], keywords)
    s["latency"] = {"server": [], "little": []}
    for e, i in zip(events, s["hit_of"]):
        if i >= 0:
            s["latency"]["little" if e["decided_by"] == "little" else "server"].append(e["t"] - keywords[i][1])
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="bench-stream's seed (default %(default)s)")
    ap.add_argument("--snr", type=float, default=10.0, help="which of bench-stream's streams (default %(default)s dB)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "stream_loopback.json")
    a = ap.parse_args(argv)
    models = models_dir()
    verifier = Shipped.read(models).verifier()
    stream = test_stream(find_dataset(a.data_dir), a.seed, a.snr)
    grpc_port, http_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "stream.wav"
        write_wav(wav, stream.audio)
        server = subprocess.Popen([str(BIN / "kws-server"), "--model", str(models / "big_int8.tflite"),
                                   "--model", str(models / f"{verifier}.tflite"), "--port", str(grpc_port),
                                   "--gateway-port", str(http_port)], stderr=subprocess.DEVNULL)
        try:
            wait_ready(f"http://127.0.0.1:{http_port}/readyz", server)
            run = subprocess.run([str(BIN / "kws-edge"), "listen", "--input", str(wav), "--verify", "grpc",
                                  "--grpc", f"127.0.0.1:{grpc_port}", "--no-progress"],
                                 capture_output=True, text=True, timeout=1800)
        finally:
            server.terminate()
            server.wait(timeout=30)
    if run.returncode != 0:
        print(run.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"kws-edge listen exited {run.returncode}: see its log above")
    events = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    s = latencies(events, stream.keywords)
    n = len(stream.keywords)
    rows, result = [], {"verifier": verifier, "snr_db": a.snr, "seed": a.seed, "keywords": n,
                        "events": len(events), "hit_pct": 100 * s["hits"] / n, "wrong_pct": 100 * s["wrong"] / n,
                        "false_in_keyword_stream": s["false"], "summary": run.stderr.strip().splitlines()[-1]}
    for who, lat in s["latency"].items():
        x = np.array(lat) if lat else np.array([np.nan])
        result[f"latency_{who}"] = {"events": len(lat), "p50_s": float(np.nanpercentile(x, 50)),
                                     "p95_s": float(np.nanpercentile(x, 95)), "max_s": float(np.nanmax(x))}
        rows.append({"decided by": who if who == "little" else verifier, "hits": len(lat),
                     "latency p50 s": result[f"latency_{who}"]["p50_s"], "p95 s": result[f"latency_{who}"]["p95_s"],
                     "max s": result[f"latency_{who}"]["max_s"]})
    print(format_table(rows, list(rows[0])))
    print(f"{n} keywords at {a.snr:g} dB: {result['hit_pct']:.1f} % hit, {result['wrong_pct']:.1f} % wrong, "
          f"{s['false']} false accepts in the keyword stream")
    print(result["summary"])
    write_results(a.out, result)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
