"""Rows of `make bench-stream` at detector settings named by hand, on the very same streams (same seed):
to compare littles, or settings, at matched false-accept rates, not only at the settings val chose.

    python -m bench.stream_rows --little models/little_listen.tflite --little models/little_stream.tflite \
        --setting little_listen:3:0.9 --setting little_stream:1:0.85
    python -m bench.stream_rows --little models/little_stream2.tflite --big models/big_stream_int8.tflite \
        --setting 'little_stream2:{"threshold": 0.75, "smooth": 1, "patience": 2, "sure": 0.9}'

Each --setting is MODEL:SMOOTH:THRESHOLD or MODEL:JSON (any detector fields; model by card name). With
--big, big verifies every setting's detections below its ``sure``, as in bench-stream's little + big rows.
The exact McNemar test on per-keyword hits compares every setting with the first. Figures on the split's
streams (default test, 6 h keyword-free).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.bench_stream import SNRS, evaluate, hear_split
from edge.stream import DetectorConfig
from kws_rpc.lab.data import find_dataset
from kws_rpc.lab.stats import mcnemar
from kws_rpc.lab.streams import RATE
from kws_rpc.model.kws_model import KwsModel


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--little", type=Path, action="append", required=True, help="a listening model (repeat)")
    ap.add_argument("--setting", action="append", required=True, metavar="MODEL:SMOOTH:THRESHOLD|MODEL:JSON")
    ap.add_argument("--big", type=Path, default=None, help="the verifier: every setting is little + big")
    ap.add_argument("--encoding", default="logmel-q5z", help="how the edge sends a window to big (default %(default)s)")
    ap.add_argument("--split", default="test", choices=["val", "test"])
    ap.add_argument("--hours", type=float, default=6.0, help="keyword-free audio (default %(default)s h)")
    ap.add_argument("--seed", type=int, default=0, help="the streams' seed (make bench-stream's: 0)")
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args(argv)
    littles = [KwsModel(p) for p in a.little]
    hops = [DetectorConfig().hop_ms * RATE // 1000 // m.feature_config.frame_step for m in littles]
    heard = dict(zip((m.name for m in littles),
                     hear_split(littles, a.split, find_dataset(a.data_dir), a.hours, a.seed, hops)))
    by_name = {m.name: m for m in littles}
    rows = []
    big = KwsModel(a.big) if a.big is not None else None
    for s in a.setting:
        name, rest = s.split(":", 1)
        if rest.lstrip().startswith("{"):
            cfg = DetectorConfig.from_doc(json.loads(rest), source=f"--setting {s}")
        else:
            smooth, threshold = rest.split(":")
            cfg = DetectorConfig(smooth=int(smooth), threshold=float(threshold))
        rows.append((s, evaluate(heard[name], by_name[name].labels, cfg, big, a.encoding)))
    first, base = rows[0]
    for s, r in rows:
        hits = ", ".join(f"{k:g} dB {r[f'{k:g}dB']['hit_pct']:.2f} %" for k in SNRS)
        print(f"{s}: hits {hits}; wrong at 10 dB {r['10dB']['wrong_pct']:.2f} %; "
              f"{r['keyword_free']['false_accepts']} false accepts in {r['keyword_free']['hours']:g} h "
              f"({r['keyword_free']['fa_per_hour']:.2f} / h)" + (f"; {r['bytes_per_hour'] / 1e3:.0f} kB / h" if big else ""))
        if s != first:
            print(f"  McNemar on hits vs {first}: " + ", ".join(
                f"{k:g} dB b={t.b} c={t.c} p={t.p:.3g}" for k in SNRS
                for t in [mcnemar(r[f"{k:g}dB"]["_hit"], base[f"{k:g}dB"]["_hit"])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
