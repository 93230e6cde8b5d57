"""k-fold out-of-fold votes (trainers.kfold) and the combiner fitted on them (trainers.stack).

Training the fold models takes an hour; these tests check what decides whether their votes are
out of fold and whether the combiner fitted on them is the one the cooperative client reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kws_rpc.lab.data import LABELS

REPO = Path(__file__).resolve().parent.parent
MEMBERS = ["big_int8", "member_cnn_int8", "member_dscnn_int8"]


def test_folds_are_stratified_disjoint_and_seeded() -> None:
    from trainers.kfold import fold_of

    labels = np.random.default_rng(1).integers(0, 8, size=7200)
    fold = fold_of(labels, 3, seed=0)
    assert set(fold.tolist()) == {0, 1, 2}  # every clip in exactly one fold
    for label in range(8):
        counts = np.bincount(fold[labels == label], minlength=3)
        assert counts.max() - counts.min() <= 1  # each word's clips dealt evenly
    assert np.array_equal(fold, fold_of(labels, 3, seed=0))
    assert not np.array_equal(fold, fold_of(labels, 3, seed=1))


def test_a_live_claim_holds_its_job_and_a_dead_ones_is_taken_over(tmp_path: Path) -> None:
    from trainers.kfold import _claim

    live = tmp_path / "big_f0.claim"
    assert _claim(live)
    assert not _claim(live)  # this process holds it
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "big_f1.claim"
    stale.write_text(str(dead.pid))
    assert _claim(stale)
    assert stale.read_text() == str(__import__("os").getpid())


def _synthetic_kfold(root: Path, n: int = 1200, folds: int = 3) -> None:
    """Fold files as trainers.kfold writes them, with members of known quality: big_int8 right on 97 %
    of the clips, member_cnn_int8 on 90 %, member_dscnn_int8 on 60 % (and unsure when wrong)."""
    from trainers.kfold import fold_of

    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(LABELS), size=n)
    fold = fold_of(labels, folds)
    root.mkdir()
    (root / "folds.json").write_text(json.dumps({"folds": folds, "seed": 0, "clips": n, "fold_of": fold.tolist()}))
    for member, acc in zip(MEMBERS, (0.97, 0.90, 0.60)):
        right = rng.random(n) < acc
        answer = np.where(right, labels, (labels + rng.integers(1, len(LABELS), size=n)) % len(LABELS))
        probs = rng.dirichlet(np.ones(len(LABELS)), size=n) * 0.2
        probs[np.arange(n), answer] += 0.8
        for k in range(folds):
            held = np.flatnonzero(fold == k)
            np.savez(root / f"{member.removesuffix('_int8')}_f{k}.npz", index=held, probs=probs[held],
                     labels=labels[held], test_probs=rng.dirichlet(np.ones(len(LABELS)), size=800))


def test_stack_fits_the_combiner_on_oof_votes_and_writes_it_for_the_client(tmp_path: Path, dataset_root: Path) -> None:
    from kws_rpc.model import ensemble
    from trainers import stack

    kfold = tmp_path / "kfold"
    _synthetic_kfold(kfold)
    manifest = tmp_path / "ensemble.json"
    val_fitted = {"weights": {"big_int8": 0.8, "member_cnn_int8": 0.0, "member_dscnn_int8": 0.2}, "space": "prob",
                  "fitted": {"split": "val", "clips": 800}}
    manifest.write_text(json.dumps({"members": MEMBERS, "weighted": val_fitted}))
    out = tmp_path / "stack.json"
    assert stack.main(["--kfold", str(kfold), "--manifest", str(manifest), "--write-manifest", "--bootstrap", "100",
                       "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    w = ensemble.load_weights(manifest)
    assert w.fitted["split"].startswith("train+val out of fold") and w.fitted["clips"] == 1200
    assert w.weights["big_int8"] > w.weights["member_dscnn_int8"]  # the better member counts more
    assert abs(sum(w.weights.values()) - 1) < 1e-9
    report = json.loads(out.read_text())
    assert report["oof"]["member_accuracy"]["big_int8"] > report["oof"]["member_accuracy"]["member_dscnn_int8"]
    test = report["splits"]["test"]
    assert set(test) >= {*MEMBERS, "majority", "weighted_oof", "weighted_val"}
    assert test["weighted_oof"]["vs_big_int8"]["b"] >= 0 and "vs_weighted_val" in test["weighted_oof"]
    assert json.loads(manifest.read_text())["weighted_val"] == val_fitted  # kept for comparison
    # Run again on the written manifest: the val-fitted weights are still the comparison.
    assert stack.main(["--kfold", str(kfold), "--manifest", str(manifest), "--bootstrap", "100",
                       "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["val_weights"]["weights"] == val_fitted["weights"]
    # A fold model missing: no fit on a partial pool, and the message names it.
    (kfold / "member_cnn_f1.npz").unlink()
    with pytest.raises(SystemExit, match="member_cnn_f1.npz"):
        stack.main(["--kfold", str(kfold), "--manifest", str(manifest), "--out", str(out)])
