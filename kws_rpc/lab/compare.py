"""`make compare`: an honest comparison of models on the same clips, and the ensembles they make.

    kws-compare models/big_int8.tflite models/member_cnn_int8.tflite \\
        models/member_dscnn_int8.tflite models/little.tflite --against models/big_int8.tflite --split val test

With 800 clips one clip is 0.125 points, so accuracies alone do not say whether a change helped. For
every split this prints:

1. accuracy and errors of each model, and against the reference (--against; --pair NEW:OLD adds more
   pairs): b = clips the model gets right and the reference wrong, c = the reverse, the exact McNemar
   p-value and a seeded paired-bootstrap 95 % CI of the accuracy difference;
2. the error overlap: how many clips both models of a pair get wrong, and the share of model A's errors
   model B gets right (an ensemble member is only useful where it is right on the others' errors);
3. ensembles over member sets (--ensemble; by default the members of models/ensemble.json and all the
   given models): soft mean of probabilities, mean of log-probabilities, majority, margin-weighted, and
   the fitted "weighted" combiner (kws_rpc.model.ensemble), each with McNemar against the reference.

The weighted combiner is fitted only on val (the members were trained on train, so val predictions are
out-of-sample; train predictions are not and are never used): k-fold cross-fitting over the val clips
gives every policy's out-of-fold (OOF) accuracy, on which a policy should be chosen; the weights fitted
on all val clips are then reported on test. --write-manifest models/ensemble.json stores them (with how
they were fitted) as the manifest's "weighted_val" entry, and as "weighted" (the cooperative client's
policy) unless that entry holds weights fitted on out-of-fold votes over train+val (make kfold, make
stack: 9x the clips), which stay.

Each model computes its own features from the audio (models may have different feature configs); its
probabilities are cached under --cache-dir keyed by the model file's sha256, the split and the feature
code, so repeated runs only redo the statistics. --seeds NAME=a.tflite,b.tflite,c.tflite reports the
spread (mean, std, min, max) of one recipe's accuracy over training seeds.

The probability cache is ``kws_rpc.lab.predictions`` and the paired statistics ``kws_rpc.lab.stats``; this
module is the report itself (its figures, their text and the manifest entry it writes), longer than most
because it reads as one document.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kws_rpc.lab import ensemble_fit
from kws_rpc.lab import stats
from kws_rpc.lab.data import LABELS, find_dataset
from kws_rpc.lab.predictions import Predictions, file_sha256
from kws_rpc.lab.stats import fmt_p, overlap, pair_test, pct
from kws_rpc.model import ensemble

log = logging.getLogger("kws.compare")


LEVEL_EDGES_DBFS = (-40.0, -30.0, -20.0)  # bands of a clip's peak level: most errors are in the quiet ones


def by_level(peaks: np.ndarray, correct: dict[str, np.ndarray],
             edges: Sequence[float] = LEVEL_EDGES_DBFS) -> list[dict[str, Any]]:
    """Each model's errors in bands of the clips' peak level (below edges[0], between edges, at or above
    the last): a few near-silent clips can hold most of a model's errors, which no ensemble fixes."""
    bounds = [-np.inf, *edges, np.inf]
    rows = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        m = (peaks >= lo) & (peaks < hi)
        band = f"< {hi:g}" if lo == -np.inf else f">= {lo:g}" if hi == np.inf else f"{lo:g} to {hi:g}"
        rows.append({"band_dbfs": band, "clips": int(m.sum()),
                     "errors": {n: int((~c[m]).sum()) for n, c in correct.items()}})
    return rows


def missed_by_all(preds: Predictions, split: str, probs: dict[str, np.ndarray],
                  correct: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The clips every given model gets wrong, with their level and each model's answer: no combination
    of these models can get them right, so they bound every ensemble's accuracy."""
    which = np.flatnonzero(~np.any(np.stack(list(correct.values())), axis=0))
    y = preds.labels(split)
    return [{"clip": name, "label": LABELS[y[i]], "peak_dbfs": peak,
             "answers": {n: LABELS[int(p[i].argmax())] for n, p in probs.items()}}
            for i, (name, peak) in zip(which, preds.clips(split, which))]


def member_sets(requested: Sequence[str], names: Sequence[str], manifest: Path) -> list[list[str]]:
    """Ensembles to score: --ensemble a,b,c sets, else the manifest's members (if given) and all models."""
    sets: list[list[str]] = []
    if requested:
        for spec in requested:
            members = [resolve(names, m) for m in spec.split(",") if m]
            sets.append(members)
        return sets
    if manifest.is_file():
        members = json.loads(manifest.read_text())["members"]
        if all(m in names for m in members):
            sets.append(list(members))
    if len(names) > 1 and list(names) not in sets:
        sets.append(list(names))
    return sets


def model_names(paths: Sequence[Path], card_names: Sequence[str]) -> list[str]:
    """One distinct label per model: its card name, else its file stem, else its path as given.

    Two shipped files copied aside keep their card name and stem (a candidate `little.tflite` beside
    models/little.tflite): labelled alike, one model's rows would silently stand for both."""
    for names in (list(card_names), [x.stem for x in paths], [str(x) for x in paths]):
        if len(set(names)) == len(names):
            return names
    dup = sorted({str(x) for x in paths if list(paths).count(x) > 1})
    raise ValueError(f"the same model is given twice: {', '.join(dup)}")


def resolve(names: Sequence[str], ref: str) -> str:
    """A model named by card name, file name or path -> its card name among the given models."""
    for cand in (ref, Path(ref).stem):
        if cand in names:
            return cand
    raise SystemExit(f"{ref!r} is not one of the given models ({', '.join(names)}): give its .tflite too")


def score_ensembles(sets: list[list[str]], probs: dict[str, np.ndarray], y: np.ndarray,
                    weights: dict[str, ensemble.Weights], ref: np.ndarray | None, resamples: int,
                    seed: int) -> list[dict[str, Any]]:
    rows = []
    for members in sets:
        key = "+".join(members)
        row: dict[str, Any] = {"members": members, "policies": {}}
        correct_of = ensemble_fit.correct_by_policy(members, probs, y, {"weighted": weights[key]} if key in weights else {})
        for policy, correct in correct_of.items():
            entry: dict[str, Any] = {"accuracy": float(correct.mean()), "errors": int((~correct).sum())}
            if ref is not None:
                entry["vs_ref"] = pair_test(correct, ref, resamples, seed)
            row["policies"][policy] = entry
        rows.append(row)
    return rows


def fit_on_val(sets: list[list[str]], probs: dict[str, np.ndarray], y: np.ndarray, folds: int,
               seed: int) -> tuple[dict[str, ensemble.Weights], dict[str, Any]]:
    """Per member set: OOF accuracy of every policy by k-fold cross-fitting on val, and weights fitted on
    all val clips in the pooling space the OOF estimate preferred."""
    weights, oof = {}, {}
    for members in sets:
        key = "+".join(members)
        clips = ensemble_fit.stack_models([probs[m] for m in members])
        res = ensemble_fit.cross_fit(clips, y, [members] * len(y), folds=folds, seed=seed)
        p, mask, names = ensemble_fit.dense(clips, [members] * len(y), members)
        w = ensemble_fit.fit_weights(p, y, names, res["space"], mask)
        best = ensemble_fit.best_policy(res["oof_accuracy"])
        weights[key] = ensemble.Weights(w.weights, w.space, {
            "split": "val", "clips": len(y), "objective": w.fitted["objective"], "nll": w.fitted["nll"],
            "space_chosen_by": f"{folds}-fold out-of-fold accuracy on val (seed {seed})",
            "oof_accuracy": res["oof_accuracy"], "oof_choice": best,
            "oof_by_space": {s: {k: v for k, v in d.items()} for s, d in res["weighted"].items()},
            "note": "fitted on val alone (members trained on train only: val predictions are out-of-sample; "
                    "train predictions are never used); make kfold and make stack fit on out-of-fold votes "
                    "over train+val instead."})
        oof[key] = {"members": members, **{k: v for k, v in res.items() if k != "members"},
                    "weights": w.weights, "oof_choice": best}
    return weights, oof


def render_split(res: dict[str, Any]) -> str:
    split, n = res["split"], res["clips"]
    lines = [f"== {split}: {n} clips (one clip = {100 / n:.3f} points) =="]
    mw = max([18, *(len(m["model"]) for m in res["models"])])  # labels may be paths (model_names)
    rw = max([14, *(len(r) for m in res["models"] for r in m["vs"])])
    lines.append(f"{'model':<{mw}} {'acc':>8} {'errors':>6}   {'vs':<{rw}} {'b':>3} {'c':>3} {'McNemar p':>9} "
                 f"{'diff [95% CI], points':>26}")
    for m in res["models"]:
        head = f"{m['model']:<{mw}} {pct(m['accuracy'])} {m['errors']:>6}"
        if not m["vs"]:
            lines.append(head)
        for ref, t in m["vs"].items():
            lines.append(f"{head}   {ref:<{rw}} {t['b']:>3} {t['c']:>3} {fmt_p(t['p']):>9} "
                         f"{100 * t['diff']:+7.3f} [{100 * t['ci95'][0]:+.3f}, {100 * t['ci95'][1]:+.3f}]")
            head = " " * len(head)
    names = [m["model"] for m in res["models"]]
    ov = res["overlap"]
    w = max(10, *(len(x) for x in names)) + 1
    lines.append("\nerrors both make (diagonal: the model's own errors)")
    lines.append(" " * w + "".join(f"{x[:w - 1]:>{w}}" for x in names))
    for a in names:
        lines.append(f"{a:<{w}}" + "".join(f"{ov[a][b]['both_wrong']:>{w}}" for b in names))
    lines.append("\nshare of the ROW model's errors the COLUMN model gets right")
    lines.append(" " * w + "".join(f"{x[:w - 1]:>{w}}" for x in names))
    for a in names:
        cells = [("-" if a == b else f"{100 * ov[a][b]['share_b_right']:.0f}% ({ov[a][b]['b_right_on_a_errors']})")
                 for b in names]
        lines.append(f"{a:<{w}}" + "".join(f"{c:>{w}}" for c in cells))
    if res.get("by_level"):
        lines.append("\nerrors by the clip's peak level (dBFS)")
        lines.append(f"{'band':<14}{'clips':>6}" + "".join(f"{x[:w - 1]:>{w}}" for x in names))
        for r in res["by_level"]:
            lines.append(f"{r['band_dbfs']:<14}{r['clips']:>6}" + "".join(f"{r['errors'][x]:>{w}}" for x in names))
    missed = res.get("missed_by_all", [])
    if len(names) > 1:
        lines.append(f"\n{len(missed)} clips no model gets right (the ceiling of any ensemble of these models: "
                     f"{pct(1 - len(missed) / n).strip()}), with their peak level (the split's median peak: "
                     f"{res.get('median_peak_dbfs', float('nan')):.1f} dBFS) and each model's answer")
        for m in missed:
            lines.append(f"  {m['clip']:<40} {m['label']:<6} {m['peak_dbfs']:>6.1f}  "
                         + " ".join(m["answers"][x] for x in names))
    if res.get("oof"):
        lines.append(f"\nout-of-fold accuracy on {split} ({next(iter(res['oof'].values()))['folds']}-fold "
                     "cross-fitting; only 'weighted' is fitted, the others have nothing to fit)")
        for o in res["oof"].values():
            sc = o["oof_accuracy"]
            lines.append(f"  {'+'.join(o['members'])}: " + ", ".join(f"{p} {pct(sc[p]).strip()}" for p in sc)
                         + f" -> {o['oof_choice']}")
            for s, d in o["weighted"].items():
                lines.append(f"    weighted/{s}: OOF {pct(d['oof_accuracy']).strip()}, OOF NLL {d['oof_nll']:.4f}")
            lines.append(f"    weights fitted on all {o['clips']} clips ({o['space']}): "
                         + ", ".join(f"{k} {v:.3f}" for k, v in o["weights"].items()))
    if res["ensembles"]:
        ref = res.get("reference")
        lines.append(f"\nensembles{' (weighted: weights fitted on val)' if split != 'val' else ''}"
                     + (f"; b/c/p against {ref}" if ref else ""))
        for e in res["ensembles"]:
            lines.append(f"  {'+'.join(e['members'])}")
            for p, d in e["policies"].items():
                t = d.get("vs_ref")
                extra = f"   b {t['b']:>3} c {t['c']:>3} p {fmt_p(t['p'])}" if t else ""
                note = " (in-sample: fitted on these clips)" if p == "weighted" and split == "val" else ""
                lines.append(f"    {p:<16} {pct(d['accuracy'])} {d['errors']:>4} errors{extra}{note}")
    if res.get("seeds"):
        lines.append("\naccuracy over training seeds")
        for g, s in res["seeds"].items():
            lines.append(f"  {g:<16} mean {pct(s['mean'])} std {100 * s['std']:.3f} min {pct(s['min'])} "
                         f"max {pct(s['max'])} (n={s['n']})")
    return "\n".join(lines)


def store_val_weights(body: dict[str, Any], entry: dict[str, Any], manifest: Path) -> str:
    """Put val-fitted weights into a manifest body: always as ``weighted_val``, and as ``weighted`` (the
    policy the cooperative client runs) only if that entry is missing or was itself fitted on val.
    Weights fitted on out-of-fold votes over train+val (trainers.stack) saw 9x the clips and stay."""
    body["weighted_val"] = entry
    current = body.get("weighted")
    if current and ensemble.Weights.from_dict(current).out_of_fold:
        return (f"wrote the weights fitted on val ({entry['space']} pooling) into {manifest} as weighted_val; "
                "its weighted entry stays the out-of-fold one (make stack refits it)")
    body["weighted"] = entry
    return f"wrote the weights fitted on val ({entry['space']} pooling) into {manifest} as weighted and weighted_val"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kws-compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help=".tflite files, each with its .json card beside it")
    p.add_argument("--against", help="reference model (one of the given, by path or card name): every model "
                                     "and ensemble gets a McNemar test and a paired-bootstrap CI against it")
    p.add_argument("--pair", action="append", default=[], metavar="NEW:OLD",
                   help="also test NEW against OLD (card names or paths of given models); repeatable")
    p.add_argument("--split", nargs="+", default=["val", "test"], choices=["val", "test"],
                   help="splits to report (default: val test). Train is never used: the members are fitted "
                        "on it, so their predictions there are in-sample")
    p.add_argument("--ensemble", action="append", default=[], metavar="A,B,C",
                   help="a member set to score (card names or paths); repeatable. Default: the members of "
                        "--manifest (if all given) and all the given models")
    p.add_argument("--manifest", default="models/ensemble.json", help="ensemble manifest (default: %(default)s)")
    p.add_argument("--folds", type=int, default=5, help="k of the k-fold cross-fitting on val (default: %(default)s)")
    p.add_argument("--no-fit", action="store_true", help="skip the weighted combiner (no val predictions needed)")
    p.add_argument("--write-manifest", metavar="PATH",
                   help="store the weights fitted on val for the manifest's member set in PATH (e.g. "
                        "models/ensemble.json): its 'weighted_val' entry, and 'weighted' (the cooperative "
                        "client's) unless that holds make stack's out-of-fold weights")
    p.add_argument("--seeds", action="append", default=[], metavar="NAME=A.tflite,B.tflite,...",
                   help="spread of one recipe's accuracy over training seeds; repeatable")
    p.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the folds")
    p.add_argument("--cache-dir", default="results/compare_cache",
                   help="per-model probabilities, keyed by model sha256 (default: %(default)s)")
    p.add_argument("--data-dir", help="folder holding mini_speech_commands/ (default: $KWS_DATA_DIR, ./data, ...)")
    p.add_argument("--out", default="results/compare.json", help="JSON report (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    paths = [Path(m) for m in args.models]
    missing = [str(x) for x in paths if not x.is_file()]
    if missing:
        p.error(f"no such model: {', '.join(missing)}")
    cards = {x: json.loads(x.with_suffix(".json").read_text()) for x in paths}
    try:
        names = model_names(paths, [cards[x]["name"] for x in paths])
    except ValueError as e:
        p.error(str(e))
    by_name = dict(zip(names, paths))
    ref = resolve(names, args.against) if args.against else None
    pairs: list[tuple[str, str]] = [(n, ref) for n in names if ref and n != ref]
    for spec in args.pair:
        new, _, old = spec.partition(":")
        if not old:
            p.error(f"--pair {spec!r}: give NEW:OLD")
        pairs.append((resolve(names, new), resolve(names, old)))
    sets = member_sets(args.ensemble, names, Path(args.manifest))
    seed_groups = {}
    for spec in args.seeds:
        g, _, files = spec.partition("=")
        seed_groups[g] = [Path(f) for f in files.split(",") if f]
    preds = Predictions(Path(args.cache_dir), find_dataset(args.data_dir))

    def split_probs(split: str) -> dict[str, np.ndarray]:
        return {n: preds.probabilities(by_name[n], split) for n in names}

    weights: dict[str, ensemble.Weights] = {}
    oof: dict[str, Any] = {}
    if not args.no_fit and sets:
        weights, oof = fit_on_val(sets, split_probs("val"), preds.labels("val"), args.folds, args.seed)
    report: dict[str, Any] = {"models": {n: {"path": str(by_name[n]), "sha256": file_sha256(by_name[n]),
                                             "architecture": cards[by_name[n]].get("architecture"),
                                             "parameters": cards[by_name[n]].get("num_parameters")}
                                         for n in names},
                              "reference": ref, "pairs": pairs, "splits": {}}
    for split in args.split:
        probs = split_probs(split)
        y = preds.labels(split)
        correct = {n: probs[n].argmax(-1) == y for n in names}
        rows = []
        for n in names:
            vs = {old: pair_test(correct[n], correct[old], args.bootstrap, args.seed) for new, old in pairs if new == n}
            rows.append({"model": n, "accuracy": float(correct[n].mean()), "errors": int((~correct[n]).sum()),
                         "vs": vs})
        res: dict[str, Any] = {
            "split": split, "clips": len(y), "reference": ref, "models": rows, "overlap": overlap(correct),
            "ensembles": score_ensembles(sets, probs, y, weights, correct[ref] if ref else None,
                                         args.bootstrap, args.seed)}
        res["missed_by_all"] = missed_by_all(preds, split, probs, correct)
        res["median_peak_dbfs"] = preds.median_peak_dbfs(split)
        res["by_level"] = by_level(preds.peaks_dbfs(split), correct)
        if split == "val":
            res["oof"] = oof
        if seed_groups:
            res["seeds"] = {g: stats.spread([float((preds.probabilities(f, split).argmax(-1) == y).mean())
                                             for f in fs]) for g, fs in seed_groups.items()}
        report["splits"][split] = res
        print(render_split(res), end="\n\n")
    if args.write_manifest:
        manifest = Path(args.write_manifest)
        body = json.loads(manifest.read_text()) if manifest.is_file() else {}
        members = body.get("members")
        key = "+".join(members) if members else ""
        if key not in weights:
            sys.exit(f"--write-manifest: {manifest} names members {members}; give them all (and no --no-fit)")
        w = weights[key]
        entry = {**w.as_dict(), "fitted": {**w.fitted, "members_sha256": {
            m: report["models"][m]["sha256"] for m in members}, "command": "kws-compare "
            + " ".join(sys.argv[1:] if argv is None else argv)}}
        print(store_val_weights(body, entry, manifest))
        manifest.write_text(json.dumps(body, indent=2) + "\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
