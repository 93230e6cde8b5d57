"""`kws-payload` (`make payload`): payload bytes per request for every route to big, and what each does to accuracy.

Runs the cascade on the test split at the calibrated threshold and sends every asked clip through each
route to big: the reference REST spec body, and gRPC Predict with a WAV file, raw PCM, or the big
model's own features as float32, float16 or int8 (computed on the edge from the server's metadata).
Sizes are what goes on the wire per request: ``len(json.dumps(body))`` for REST, ``ByteSize()`` of the
PredictRequest for gRPC (HTTP/2 and TCP framing excluded for both).

Lossy payloads (float16, int8) may change big's answer. With a server the answers are the server's;
with ``--local-big`` each request is decoded by the same ``kws_rpc.wire.codec`` functions the server uses and
fed to the same ``models/big_int8.tflite``, so the figures equal the server's without running one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from edge.cascade import (BIG, CASCADE_FILE, LITTLE, RESULTS, add_remote_args, little_on_file, load_threshold,
                          local_answer, remote, repo_relative, should_ask)
from edge.lab.cascade_report import MB
from edge.transports import Transport
from kws_rpc.lab.data import DATASET_DIR, LABELS, find_dataset, label_of, split_names
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.wire.encodings import ROUTES, is_logmel, payload_bytes, request_for, request_id


def measure(route: str, clips: list[tuple[int, np.ndarray]], big: KwsModel | None, remote: Transport | None,
            device: str) -> dict[str, Any]:
    """Sends every (position in the split, audio) clip one way; returns sizes and big's labels (None where
    a remote call failed)."""
    sizes: list[int] = []
    labels: list[str | None] = []
    for position, audio in clips:
        rid = request_id(position)
        label = remote.ask(audio, rid).label if remote is not None else None
        config = big.feature_config if big is not None else getattr(remote, "config", None)
        if route.startswith("grpc-") and is_logmel(route[5:]) and config is None:  # the server never sent its metadata
            labels.append(label)
            continue
        request = request_for(route, audio, rid, device, config)
        sizes.append(payload_bytes(request))
        labels.append(local_answer(big, request) if big is not None else label)
    return {"sizes": sizes, "labels": labels}


def outcome(threshold: float, margins: np.ndarray, little: list[str], true: list[str],
            answers: dict[int, tuple[str | None, int]]) -> dict[str, Any]:
    """Accuracy, cost and calls of the cascade at ``threshold`` given big's answers and request sizes."""
    asked = [i for i in np.flatnonzero(should_ask(margins, threshold)) if i in answers]
    final = list(little)
    for i in asked:
        final[i] = answers[i][0] or final[i]
    return {"threshold": threshold, "calls": len(asked), "failures": sum(answers[i][0] is None for i in asked),
            "cost_mb": sum(answers[i][1] for i in asked) / MB,
            "accuracy": float(np.mean([f == t for f, t in zip(final, true)]))}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--little", default=str(LITTLE))
    ap.add_argument("--big", default=str(BIG), help="with --local-big (default: the model the server serves)")
    ap.add_argument("--local-big", action="store_true", help="decode each request locally instead of a server")
    add_remote_args(ap, timeout_s=5.0)
    ap.add_argument("--threshold", type=float, default=None, help="one threshold for all (default: cascade.json)")
    ap.add_argument("--cascade", default=str(CASCADE_FILE), help="calibrated thresholds")
    ap.add_argument("--split", default="test", choices=("val", "test"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=str(RESULTS / "payload.json"))
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)

    from tqdm import tqdm

    common, source = ((a.threshold, "--threshold") if a.threshold is not None
                      else load_threshold(Path(a.cascade), "rest-spec"))
    own = {w: common if a.threshold is not None else load_threshold(Path(a.cascade), w)[0] for w in ROUTES}
    little = KwsModel(a.little)
    big = KwsModel(a.big) if a.local_big else None
    root = find_dataset(a.data_dir) / DATASET_DIR
    names = split_names(a.split)[: a.limit]
    true = [LABELS[label_of(n)] for n in names]
    little_labels, margins, audios = [], np.zeros(len(names)), {}
    widest = max([common, *own.values()])
    for i, name in enumerate(tqdm(names, desc=f"little on {a.split}", unit="clip")):
        audio, idx, margins[i], _ = little_on_file(little, root / name)
        little_labels.append(little.labels[idx])
        if should_ask(margins[i], widest) or i < 20:  # the first clips size requests even if none is asked
            audios[i] = audio
    rows = []
    for route in tqdm(ROUTES, desc="payloads", unit="way"):
        remote_big: Transport | None = None
        if big is None:
            remote_big = remote(route, a)
        try:
            m = measure(route, list(audios.items()), big, remote_big, a.device)
        finally:
            if remote_big is not None:
                remote_big.close()
        answers = dict(zip(audios, zip(m["labels"], m["sizes"])))
        sizes = np.array(m["sizes"] or [0])
        at_common = outcome(common, margins, little_labels, true, answers)
        at_own = outcome(own[route], margins, little_labels, true, answers)
        rows.append({"way": route, "bytes_mean": float(sizes.mean()), "bytes_min": int(sizes.min()),
                     "bytes_max": int(sizes.max()), "at_spec_threshold": at_common, "at_own_threshold": at_own})
    print(f"{a.split} split, {len(names)} clips, big {'local ' + a.big if big is not None else 'remote'}; "
          f"spec threshold {common:g} ({source}); own = calibrated on val for that way")
    print(f"{'route':<14} {'bytes/req':>9} {'x spec':>6} | {'calls':>5} {'cost MB':>8} {'acc %':>7} | "
          f"{'own thr':>7} {'calls':>5} {'cost MB':>8} {'acc %':>7} {'fail':>4}")
    spec = rows[0]["bytes_mean"] or 1.0
    for r in rows:
        c, o = r["at_spec_threshold"], r["at_own_threshold"]
        print(f"{r['route']:<14} {r['bytes_mean']:9.0f} {r['bytes_mean'] / spec:6.3f} | {c['calls']:5d} "
              f"{c['cost_mb']:8.3f} {100 * c['accuracy']:7.3f} | {o['threshold']:7.4f} {o['calls']:5d} "
              f"{o['cost_mb']:8.3f} {100 * o['accuracy']:7.3f} {c['failures'] + o['failures']:4d}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"split": a.split, "clips": len(names), "spec_threshold": common,
                               "threshold_source": source, "big": repo_relative(a.big) if big is not None else
                               {"rest": a.url, "grpc": a.grpc}, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
