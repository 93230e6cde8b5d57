"""Fits the cooperative client's combiner on out-of-fold votes over train+val, and reports it on test.

`python -m trainers.stack --kfold results/kfold` reads what `python -m trainers.kfold` wrote: for every
member of the shipped ensemble (models/ensemble.json), the int8 probabilities of its k fold models on
the clips each held out, one out-of-sample vote per member for each of the 7,200 train+val clips. On
those votes it

1. reports each member's OOF accuracy and the pairwise error overlap (7,200 clips: about nine times
   the errors val's 800 show, so the overlap is measured, not guessed);
2. scores every policy by 5-fold cross-fitting on the OOF votes (``kws_rpc.model.ensemble_fit.cross_fit``: the
   ``weighted`` combiner is fitted on four fifths and decides the rest) and picks the pooling space;
3. fits the weights on all 7,200 votes (``kws_rpc.model.ensemble_fit.fit_weights``);
4. applies them to the shipped members' votes on test (and val, for reference: val clips are in the
   OOF pool, the shipped members never trained on them) with exact McNemar tests against big alone
   and against the weights fitted on val's 800 clips that the manifest holds.

``--write-manifest`` stores the OOF weights as the manifest's ``weighted`` entry (the cooperative
client's fitted policy) and keeps the val-fitted ones beside them as ``weighted_val``. Numpy only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from kws_rpc.lab import ensemble_fit
from kws_rpc.lab.data import find_dataset
from kws_rpc.lab.predictions import Predictions, file_sha256
from kws_rpc.lab.stats import fmt_p, overlap, pair_test, pct
from kws_rpc.model import ensemble

log = logging.getLogger("trainers.stack")


def recipe_of(member: str) -> str:
    """The float recipe a served member comes from: big_int8 -> big."""
    return member.removesuffix("_int8")


def load_oof(kfold: Path, members: list[str]) -> dict[str, Any]:
    """OOF probabilities (N, K, C) over the pool, labels (N,), and the fold models' test probabilities
    (member -> (folds, T, C)). Exits with what is missing if a fold model is not done."""
    meta = json.loads((kfold / "folds.json").read_text())
    folds, n = meta["folds"], meta["clips"]
    files = {m: [kfold / f"{recipe_of(m)}_f{k}.npz" for k in range(folds)] for m in members}
    missing = [str(f) for fs in files.values() for f in fs if not f.is_file()]
    if missing:
        raise SystemExit(f"{len(missing)} fold models are not done: {', '.join(missing)}. Run "
                         f"python -m trainers.kfold --out {kfold} --members {' '.join(recipe_of(m) for m in members)}")
    probs, labels, seen, test = None, np.full(n, -1), np.zeros((len(members), n), dtype=int), {}
    for j, m in enumerate(members):
        test[m] = []
        for f in files[m]:
            with np.load(f) as z:
                idx, p = z["index"], z["probs"]
                if probs is None:
                    probs = np.zeros((n, len(members), p.shape[1]))
                probs[idx, j] = p
                labels[idx] = z["labels"]
                seen[j, idx] += 1
                test[m].append(z["test_probs"])
        test[m] = np.stack(test[m])
    if not np.all(seen == 1):
        raise SystemExit(f"{kfold}: the fold models do not cover each of the {n} clips exactly once")
    return {"probs": probs, "labels": labels, "test": test, "meta": meta}


def evaluate(members: list[str], probs: dict[str, np.ndarray], y: np.ndarray,
             fitted: dict[str, ensemble.Weights], ref: str, resamples: int, seed: int) -> dict[str, Any]:
    """Accuracy of every policy (and each fitted weighting) on one split, paired against ``ref`` alone."""
    base = probs[ref].argmax(-1) == y
    rows: dict[str, Any] = {m: {"accuracy": float((probs[m].argmax(-1) == y).mean())} for m in members}
    correct_of = ensemble_fit.correct_by_policy(members, probs, y, fitted)
    for name, c in correct_of.items():
        rows[name] = {"accuracy": float(c.mean()), "errors": int((~c).sum()),
                      f"vs_{ref}": pair_test(c, base, resamples, seed)}
    if "weighted_oof" in correct_of and "weighted_val" in correct_of:
        rows["weighted_oof"]["vs_weighted_val"] = pair_test(correct_of["weighted_oof"], correct_of["weighted_val"],
                                                            resamples, seed)
    return rows


def render(report: dict[str, Any]) -> str:
    members = report["members"]
    oof = report["oof"]
    lines = [f"== out-of-fold votes: {oof['clips']} train+val clips, {report['folds']} fold models per member =="]
    for m in members:
        lines.append(f"  {m:<20} {pct(oof['member_accuracy'][m])}  ({oof['overlap'][m][m]['a_errors']} errors)")
    w = max(len(m) for m in members) + 2
    lines.append("\nerrors both make (diagonal: the member's own), then the share of the ROW member's errors "
                 "the COLUMN member gets right")
    lines.append(" " * w + "".join(f"{m:>{w}}" for m in members))
    for a in members:
        lines.append(f"{a:<{w}}" + "".join(f"{oof['overlap'][a][b]['both_wrong']:>{w}}" for b in members))
    for a in members:
        cells = ["-" if a == b else f"{100 * oof['overlap'][a][b]['share_b_right']:.0f}%" for b in members]
        lines.append(f"{a:<{w}}" + "".join(f"{c:>{w}}" for c in cells))
    cf = oof["cross_fit"]
    lines.append(f"\npolicies, 5-fold cross-fitted on the OOF votes: "
                 + ", ".join(f"{p} {pct(a).strip()}" for p, a in cf["oof_accuracy"].items())
                 + f" -> {oof['choice']}")
    best = max(members, key=lambda m: oof["member_accuracy"][m])
    for policy, vs in oof["policy_vs_member"].items():
        t = vs[best]
        lines.append(f"  {policy:<16} vs {best}: {t['b']} / {t['c']}, p = {fmt_p(t['p'])}, "
                     f"{100 * t['diff']:+.3f} [{100 * t['ci95'][0]:+.3f}, {100 * t['ci95'][1]:+.3f}] points")
    fw = report["weights"]
    lines.append(f"weights fitted on all {oof['clips']} OOF votes ({fw['space']} pooling): "
                 + ", ".join(f"{k} {v:.3f}" for k, v in fw["weights"].items()))
    if report.get("val_weights"):
        vw = report["val_weights"]
        lines.append(f"the manifest's weights, fitted on val's 800 ({vw['space']}): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in vw["weights"].items()))
    ref = report["reference"]
    for split, rows in report["splits"].items():
        lines.append(f"\n== {split} (shipped members){': its clips are in the OOF pool' if split == 'val' else ''} ==")
        for name, r in rows.items():
            line = f"  {name:<20} {pct(r['accuracy'])}"
            t = r.get(f"vs_{ref}")
            if t:
                line += f"   vs {ref}: {t['b']} / {t['c']}, p = {fmt_p(t['p'])}"
            t = r.get("vs_weighted_val")
            if t:
                line += f"; vs weighted_val: {t['b']} / {t['c']}, p = {fmt_p(t['p'])}"
            lines.append(line)
    bag = report.get("fold_bag")
    if bag:
        lines.append("\nfold models on test (not shipped; each saw 2/3 of train+val): "
                     + ", ".join(f"{k} {pct(v).strip()}" for k, v in bag.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainers.stack", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kfold", default="results/kfold", help="what trainers.kfold wrote (default: %(default)s)")
    ap.add_argument("--manifest", default="models/ensemble.json", help="the shipped ensemble (default: %(default)s)")
    ap.add_argument("--models", default="models", help="folder of the shipped members (default: %(default)s)")
    ap.add_argument("--extra", action="append", default=[], metavar="MODEL.tflite",
                    help="a candidate member (int8 .tflite with its card; its fold models are <recipe>_f<k> in "
                         "--kfold, recipe = file name without _int8) scored with the manifest's; repeatable")
    ap.add_argument("--write-manifest", action="store_true",
                    help="store the OOF-fitted weights as the manifest's 'weighted' entry (not with --extra)")
    ap.add_argument("--folds", type=int, default=5, help="k of the cross-fitting on the OOF votes (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the cross-fitting folds and the bootstrap")
    ap.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples (default: %(default)s)")
    ap.add_argument("--cache-dir", default="results/compare_cache", help="shipped members' probabilities (default: %(default)s)")
    ap.add_argument("--data-dir", help="folder holding mini_speech_commands/ (default: $KWS_DATA_DIR, ./data, ...)")
    ap.add_argument("--out", default="results/stack.json", help="JSON report (default: %(default)s)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    manifest = Path(args.manifest)
    body = json.loads(manifest.read_text())
    if args.extra and args.write_manifest:
        ap.error("--write-manifest stores weights for the manifest's members: leave out --extra")
    paths = {m: Path(args.models) / f"{m}.tflite" for m in body["members"]}
    paths.update({Path(x).stem: Path(x) for x in args.extra})
    members: list[str] = list(paths)
    data = load_oof(Path(args.kfold), members)
    p, y = data["probs"], data["labels"]
    clips, voters = list(p), [members] * len(y)
    correct = {m: p[:, j].argmax(-1) == y for j, m in enumerate(members)}
    cf = ensemble_fit.cross_fit(clips, y, voters, folds=args.folds, seed=args.seed, keep_predictions=True)
    choice = ensemble_fit.best_policy(cf["oof_accuracy"])
    # Paired tests on the OOF votes: each policy's decisions (weighted: cross-fitted) against each member.
    decisions = {policy: ensemble.decide_all(policy, clips, voters) for policy in ensemble.POLICIES}
    decisions["weighted"] = cf["weighted"][cf["space"]]["predictions"]
    for d in cf["weighted"].values():
        d.pop("predictions")
    oof_pairs = {policy: {m: pair_test(pred == y, correct[m], args.bootstrap, args.seed) for m in members}
                 for policy, pred in decisions.items()}
    w = ensemble_fit.fit_weights(p, y, members, cf["space"])
    meta = data["meta"]
    shas = {m: file_sha256(paths[m]) for m in members}
    oof_w = ensemble.Weights(w.weights, w.space, {
        "split": f"train+val out of fold ({meta['folds']}-fold retraining of each member: trainers.kfold)",
        "clips": len(y), "objective": w.fitted["objective"], "nll": w.fitted["nll"],
        "space_chosen_by": f"{args.folds}-fold cross-fitting on the OOF votes (seed {args.seed})",
        "oof_accuracy": cf["oof_accuracy"], "oof_choice": choice, "fold_seed": meta["seed"],
        "members_sha256": shas, "command": "python -m trainers.stack " + " ".join(sys.argv[1:] if argv is None else argv)})
    fitted = {"weighted_oof": oof_w}
    # The weights fitted on val's 800 clips (kws_rpc.lab.compare --write-manifest), for comparison: the
    # manifest's "weighted" entry until the OOF weights replace it, then its "weighted_val" entry.
    old = body.get("weighted_val") or body.get("weighted")
    if old and old.get("fitted", {}).get("split") == "val":
        fitted["weighted_val"] = ensemble.Weights.from_dict(old)
    preds = Predictions(Path(args.cache_dir), find_dataset(args.data_dir))
    ref = members[0]
    report: dict[str, Any] = {
        "members": members, "folds": meta["folds"], "reference": ref,
        "oof": {"clips": len(y), "member_accuracy": {m: float(c.mean()) for m, c in correct.items()},
                "overlap": overlap(correct), "cross_fit": {k: v for k, v in cf.items() if k != "members"},
                "choice": choice, "policy_vs_member": oof_pairs},
        "weights": oof_w.as_dict(), "val_weights": fitted["weighted_val"].as_dict() if "weighted_val" in fitted else None,
        "splits": {}}
    for split in ("test", "val"):
        probs = {m: preds.probabilities(paths[m], split) for m in members}
        report["splits"][split] = evaluate(members, probs, preds.labels(split), fitted, ref, args.bootstrap, args.seed)
    ty = preds.labels("test")
    bag = {m: float((data["test"][m].mean(0).argmax(-1) == ty).mean()) for m in members}
    bag["all fold models, mean"] = float((np.mean([t.mean(0) for t in data["test"].values()], 0).argmax(-1) == ty).mean())
    report["fold_bag"] = bag
    print(render(report))
    if args.write_manifest:
        if "weighted_val" in fitted:
            body["weighted_val"] = fitted["weighted_val"].as_dict()
        body["weighted"] = oof_w.as_dict()
        manifest.write_text(json.dumps(body, indent=2) + "\n")
        print(f"wrote the OOF-fitted weights ({oof_w.space} pooling) into {manifest}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
