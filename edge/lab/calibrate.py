"""`make calibrate` / `make sweep`: choose the cascade threshold on VAL, and chart accuracy against cost.

Little and big predictions of a split are computed once; every threshold is then a cheap vectorised
replay (ask iff margin <= threshold). The threshold is picked on the val split only, so the test figures
the client prints stay an honest estimate. Big runs on the server (REST or gRPC), or with ``--local-big``
in-process from the same ``models/big_int8.tflite`` the server loads: the same file, features and interpreter
give the same answers without needing a server during calibration. Cost follows the reference rule: the
bytes of the spec REST body of every asked clip (``--cost-of`` counts another way's bytes, and then
local big is fed that way's payload, so lossy features are accounted for).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import statistics
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.cascade import (BIG, CASCADE_FILE, LITTLE, RESULTS, ROOT, add_remote_args, little_on_file,
                          load_threshold, local_answer, remote, repo_relative)
from edge.lab.cascade_report import MB, plot_sweep
from edge.transports import Transport
from kws_rpc.lab.data import DATASET_DIR, LABELS, find_dataset, label_of, split_names
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.wire.encodings import (ENCODING_CHOICES, ROUTE_CHOICES, ROUTES, is_logmel, payload_bytes, request_for,
                                    request_id)
from kws_rpc.wire.encodings import route as canonical_route

SWEEP_THRESHOLDS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5,
                    0.6, 0.7, 0.8, 0.9, 1.0)
# Default goal, per route: the project's budgets for one 800-clip run. Full-audio routes: 0.95 MB,
# a third of the reference's best cascade (2.835 MB); the spec body with an IMA ADPCM WAV: 0.50 MB;
# log-mel encodings: 0.10 MB; logmel-dct: 0.05 MB.
AUDIO_BUDGET_MB = 0.95
# A REST body with the clip as IMA ADPCM is a quarter of the PCM body: 0.50 MB buys about twice the asks
# 0.95 MB buys in PCM (0.50 MB is the project's goal for a cascade that keeps the course's REST body).
ADPCM_BUDGET_MB = 0.50
FEATURES_BUDGET_MB = 0.10
# The transform-coded encoding (logmel-dct, <= 300 B a request) gets half that: as many asks as q5z's 0.10 MB.
DCT_BUDGET_MB = 0.05
# How sure the calibration is that a run on another split of the same size stays within the budget.
DEFAULT_CONFIDENCE = 0.95


def default_budget(route_: str) -> float:
    name = canonical_route(route_)
    if name == "grpc-logmel-dct":
        return DCT_BUDGET_MB
    if name == "rest-adpcm":
        return ADPCM_BUDGET_MB
    return FEATURES_BUDGET_MB if is_logmel(name[len("grpc-"):]) else AUDIO_BUDGET_MB


@dataclasses.dataclass(frozen=True)
class SplitPredictions:
    """Everything a threshold needs, one entry per clip of a split (labels as indices of LABELS)."""

    split: str
    names: list[str]
    true: np.ndarray
    little: np.ndarray
    margin: np.ndarray
    big: np.ndarray  # -1 where the remote big call failed
    request_bytes: np.ndarray  # bytes of this clip's request, for one route to big

    def at(self, threshold: float) -> dict[str, Any]:
        asked = self.margin <= threshold
        final = np.where(asked & (self.big >= 0), self.big, self.little)
        return {"threshold": float(threshold), "accuracy": float(np.mean(final == self.true)),
                "cost_mb": float(self.request_bytes[asked].sum() / MB), "calls": int(asked.sum())}


def predict_split(split: str, little_path: Path, big_local: Path | None, transport: Transport | None,
                  data_dir: str | None = None, limit: int | None = None, device: str = hex(uuid.getnode()),
                  progress: bool = True, routes: Sequence[str] = ("rest-spec",)) -> dict[str, SplitPredictions]:
    """Little on every clip read from disk as the Pi does, then, for each route to big (see
    kws_rpc.wire.encodings.ROUTES), big's label and the bytes that route would send. Local big is fed each route's encoding
    as the server would decode it; a remote big answers once per clip, over the given transport."""
    from tqdm import tqdm

    little = KwsModel(little_path)
    big = KwsModel(big_local) if big_local is not None else None
    root = find_dataset(data_dir) / DATASET_DIR
    names = split_names(split)[:limit]
    n = len(names)
    little_idx, margin = np.zeros(n, int), np.zeros(n, float)
    big_idx = {w: np.zeros(n, int) for w in routes}
    size = {w: np.zeros(n, int) for w in routes}
    for i, name in enumerate(tqdm(names, desc=f"predict {split}", unit="clip", disable=not progress)):
        audio, idx, margin[i], _ = little_on_file(little, root / name)
        little_idx[i] = LABELS.index(little.labels[idx])
        label = transport.ask(audio, request_id(i)).label if transport is not None else None
        config = big.feature_config if big is not None else getattr(transport, "config", None)
        for w in routes:
            if w.startswith("grpc-mfcc") and config is None:
                raise SystemExit(f"the cost of {w} needs big's feature config: use --local-big or "
                                 "--transport grpc --encoding logmel-f32 with a reachable server")
            request = request_for(w, audio, request_id(i), device, config)
            size[w][i] = payload_bytes(request)
            answer = local_answer(big, request) if big is not None else label
            big_idx[w][i] = LABELS.index(answer) if answer in LABELS else -1
    true = np.array([label_of(nm) for nm in names])
    return {w: SplitPredictions(split, names, true, little_idx, margin, big_idx[w], size[w]) for w in routes}


def candidate_thresholds(margin: np.ndarray) -> np.ndarray:
    """One threshold per distinct policy: midway between consecutive distinct margins (robust to the
    small shifts between val and test), plus "never ask" (-1) and "always ask" (1)."""
    m = np.unique(margin)
    return np.concatenate([[-1.0], (m[:-1] + m[1:]) / 2, [1.0]])


def cost_bound_mb(point: dict[str, Any], clips: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """Upper prediction bound of what a threshold will cost on another split of ``clips`` clips.

    A threshold asking c of n val clips asks a Binomial(n, c/n) number of another split's clips; the
    difference of the two counts has variance about 2c(1 - c/n), so with z the one-sided normal
    quantile of ``confidence`` the other split asks at most c + z*sqrt(2c(1 - c/n)) clips, each at this
    threshold's mean request size."""
    calls = point["calls"]
    if calls == 0:
        return 0.0
    z = statistics.NormalDist().inv_cdf(confidence)
    return (calls + z * math.sqrt(2 * calls * (1 - calls / clips))) * point["cost_mb"] / calls


def pick_threshold(preds: SplitPredictions, target_accuracy: float | None = None,
                   budget_mb: float | None = None, confidence: float = DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """Cheapest threshold reaching ``target_accuracy`` on val; or, for a budget, the threshold that spends
    it: the widest one whose cost bound (``cost_bound_mb``) fits ``budget_mb``.

    Why spend the budget rather than stop at the best val accuracy: the clips a wider threshold adds are
    the ones little is least sure of, where big, the better model, is right more often, so each extra
    ask is worth having in expectation. Once val accuracy reaches big's own it stays flat, and "the best
    val accuracy" is then only the cheapest of many equal points, a choice made by noise."""
    points = [preds.at(t) for t in candidate_thresholds(preds.margin)]
    if target_accuracy is not None:
        ok = [p for p in points if p["accuracy"] >= target_accuracy]
        if not ok:
            best = max(points, key=lambda p: (p["accuracy"], -p["cost_mb"]))
            raise ValueError(f"no threshold reaches {target_accuracy:.4f} on {preds.split}; best is "
                             f"{best['accuracy']:.4f} at {best['threshold']:.4f}")
        return min(ok, key=lambda p: (p["cost_mb"], p["threshold"]))
    budget = default_budget("rest-spec") if budget_mb is None else budget_mb
    n = len(preds.names)
    for p in points:
        p["cost_bound_mb"] = cost_bound_mb(p, n, confidence)
    within = [p for p in points if p["cost_bound_mb"] <= budget]
    return max(within, key=lambda p: p["threshold"])


def sweep(preds: SplitPredictions, thresholds: Sequence[float] = SWEEP_THRESHOLDS) -> list[dict[str, Any]]:
    return [preds.at(t) for t in sorted(set(thresholds))]


def make_transport(a: argparse.Namespace) -> Transport | None:
    if a.local_big:
        return None
    return remote("rest-spec" if a.transport == "rest" else f"grpc-{a.encoding}", a)


def _route(name: str) -> str:
    try:
        return canonical_route(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    goal = ap.add_mutually_exclusive_group()
    goal.add_argument("--target-accuracy", type=float, help="cheapest threshold with val accuracy >= this (0-1)")
    goal.add_argument("--budget-mb", type=float,
                      help=f"spend up to this many MB per run of as many clips as val (default: {AUDIO_BUDGET_MB} MB "
                      f"for audio ways, {FEATURES_BUDGET_MB} MB for feature payloads): the widest threshold whose "
                      "cost, projected from val, stays within it with --confidence")
    ap.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE,
                    help="probability that a run on another split stays within the budget (default: %(default)s)")
    ap.add_argument("--sweep", action="store_true", help="chart accuracy vs cost over thresholds instead")
    ap.add_argument("--split", default=None, help="sweep split (default test); calibration always uses val")
    ap.add_argument("--little", default=str(LITTLE))
    ap.add_argument("--big", default=str(BIG), help="with --local-big (default: the model the server serves)")
    ap.add_argument("--local-big", action="store_true", help="run big in-process instead of asking the server")
    ap.add_argument("--transport", choices=("rest", "grpc"), default="grpc")
    add_remote_args(ap, timeout_s=5.0)
    ap.add_argument("--encoding", "--payload", dest="encoding", choices=ENCODING_CHOICES, default="wav",
                    metavar="ENCODING", help="gRPC: the encoding big is asked with (remote calibration; default wav)")
    ap.add_argument("--cost-of", choices=ROUTE_CHOICES, default="rest-spec", type=_route, metavar="ROUTE",
                    help="sweep: whose bytes the cost counts (default: the reference's REST spec body)")
    ap.add_argument("--routes", "--ways", dest="routes", nargs="+", choices=ROUTES, type=_route, default=None,
                    metavar="ROUTE",
                    help=f"calibration: routes to pick a threshold for (default all; rest-spec always): {', '.join(ROUTES)}")
    ap.add_argument("--out", default=str(RESULTS / CASCADE_FILE.name),
                    help="where the calibrated thresholds go (default: results/; runs read models/cascade.json, "
                         "so install them there, e.g. with `make calibrate-commit`)")
    ap.add_argument("--cascade", default=str(CASCADE_FILE),
                    help="sweep: the calibrated thresholds to mark (default: the installed models/cascade.json)")
    ap.add_argument("--results", default=str(RESULTS), help="folder for sweep JSON + PNG")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--data-dir", default=None)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if not 0 < a.confidence < 1:
        raise SystemExit(f"--confidence is a probability strictly between 0 and 1, e.g. 0.95; got {a.confidence}")
    split = (a.split or "test") if a.sweep else "val"
    if not a.sweep and a.split not in (None, "val"):
        raise SystemExit("calibration picks the threshold on val only; use --sweep to look at other splits")
    routes = [a.cost_of] if a.sweep else list(dict.fromkeys(["rest-spec", *(a.routes or ROUTES)]))
    if not a.local_big and not a.sweep and a.routes is None and not (a.transport == "grpc" and
                                                                   is_logmel(a.encoding)):
        routes = ["rest-spec", "rest-adpcm", "grpc-wav", "grpc-pcm"]  # log-mel sizes need the metadata a log-mel transport learns
    transport = make_transport(a)
    try:
        preds = predict_split(split, Path(a.little), Path(a.big) if a.local_big else None, transport,
                              a.data_dir, a.limit, a.device, routes=routes)
    finally:
        if transport is not None:
            transport.close()
    big_source = f"local {repo_relative(a.big)}" if a.local_big else f"{a.transport} {a.grpc if a.transport == 'grpc' else a.url}"
    return run_sweep(a, preds[a.cost_of], big_source) if a.sweep else write_calibration(a, preds, big_source)


def run_sweep(a: argparse.Namespace, preds: SplitPredictions, big_source: str) -> int:
    """Prints and saves accuracy vs cost at fixed thresholds (plus the calibrated one) for one split."""
    split = preds.split
    calibrated, source = load_threshold(Path(a.cascade), a.cost_of)
    rows = sweep(preds, [*SWEEP_THRESHOLDS, calibrated])
    little_only, big_only = preds.at(-1.0), preds.at(1.0)
    print(f"{'threshold':>9} {'accuracy %':>10} {'cost MB':>8} {'calls':>5}")
    for r in rows:
        mark = "  <- calibrated" if r["threshold"] == calibrated and source != "default" else ""
        print(f"{r['threshold']:9.3f} {100 * r['accuracy']:10.3f} {r['cost_mb']:8.3f} {r['calls']:5d}{mark}")
    print(f"little only {100 * little_only['accuracy']:.3f}%; big on every clip "
          f"{100 * big_only['accuracy']:.3f}% at {big_only['cost_mb']:.3f} MB")
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"sweep_{split}" if a.cost_of == "rest-spec" else f"sweep_{split}_{a.cost_of}"
    doc = {"split": split, "big": big_source, "cost_of": a.cost_of, "calibrated_threshold": calibrated,
           "threshold_source": source, "little_only": little_only, "big_always": big_only, "rows": rows}
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    plot_sweep(out / f"{stem}.png", rows, split, calibrated if source != "default" else None,
               little_only, big_only, a.cost_of)
    print(f"wrote {out / stem}.json and .png")
    return 0


def write_calibration(a: argparse.Namespace, preds: dict[str, SplitPredictions], big_source: str) -> int:
    """Picks a threshold per route on val (the same budget buys more clips with smaller requests)
    and records them, with how they were chosen, in --out; the top-level threshold is the reference wire
    format's (rest-spec). Runs read models/cascade.json: writing there is an explicit --out."""
    target = ({"target_accuracy": a.target_accuracy} if a.target_accuracy is not None
              else {"budget_mb": a.budget_mb} if a.budget_mb is not None
              else {"budget_mb": {route: default_budget(route) for route in preds}})
    if a.target_accuracy is None:
        target["confidence"] = a.confidence
    chosen: dict[str, dict[str, Any]] = {}
    for route, p in preds.items():
        if p.split != "val":
            raise ValueError(f"thresholds are chosen on val, not {p.split}")
        budget = a.budget_mb if a.budget_mb is not None else default_budget(route)
        c = pick_threshold(p, a.target_accuracy, budget, a.confidence)
        chosen[route] = {"threshold": c["threshold"], "val_accuracy": c["accuracy"], "val_cost_mb": c["cost_mb"],
                       "val_calls": c["calls"]}
        bound = ""
        if "cost_bound_mb" in c:
            chosen[route]["cost_bound_mb"] = c["cost_bound_mb"]
            bound = f", at most {c['cost_bound_mb']:.3f} MB on another split ({100 * a.confidence:g}% sure)"
        print(f"{route:<14} threshold {c['threshold']:.4f}: val accuracy {100 * c['accuracy']:.3f}% at "
              f"{c['cost_mb']:.3f} MB ({c['calls']} calls){bound}")
    spec = preds["rest-spec"]
    doc = {**chosen["rest-spec"], "split": "val", "target": target, "val_clips": len(spec.names),
           "val_little_accuracy": spec.at(-1.0)["accuracy"], "ways": chosen,
           "little": KwsModel(a.little).card.sha256, "big": big_source,
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    shown = repo_relative(out) if out.resolve().is_relative_to(ROOT) else str(out)
    print(f"-> {shown}")
    if out.resolve() != CASCADE_FILE.resolve():
        print(f"runs still read {repo_relative(CASCADE_FILE)}: try these with `kws-edge eval --cascade "
              f"{shown}`; install them with `cp {shown} {repo_relative(CASCADE_FILE)}` or `make calibrate-commit`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
