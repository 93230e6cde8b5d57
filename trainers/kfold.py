"""Out-of-fold (OOF) predictions of the ensemble members over train+val, by k-fold retraining.

`python -m trainers.kfold --out results/kfold` pools the train and val splits (7,200 clips), cuts them
into --folds folds (stratified by label, seeded), and for every member and fold trains the member's own
recipe (architecture, seed, augmentation, epochs) on the other folds, keeping the last epoch (the
held-out fold is scored every epoch for the log, never to choose). Each fold model is quantized int8
as the served members are (trainers.quantize.convert: per-channel, 500 calibration clips of its own
training folds) and written with its card; its probabilities on the held-out fold and on the test
split go to `<member>_f<k>.npz`. Every clip of train+val then has one prediction per member from a
model that never saw it: 7,200 out-of-sample votes instead of val's 800, the data the cooperative
client's combiner is fitted on (`python -m trainers.stack`).

Jobs are claimed through files in --out, so two processes started side by side share the work (`make
kfold` does that: 83 min for the three members here, with other work on the cores) and a stopped run
resumes where it was: a job with its .npz is done, and a claim left by a process that is no longer
running is taken over.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import trainers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import numpy as np

from kws_rpc.audio.features import log_mel
from kws_rpc.lab.data import LABELS, find_dataset, load_split
from kws_rpc.model.card import ModelCard, file_facts
from kws_rpc.model.kws_model import KwsModel

log = logging.getLogger("trainers.kfold")
MEMBERS = ("big", "member_cnn", "member_dscnn")  # the shipped ensemble's float recipes


def fold_of(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Fold index of every clip: each label's clips shuffled, then dealt round-robin, so every fold
    holds the same share of every word."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        out[idx] = np.arange(len(idx)) % folds
    return out


def pool(root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Train then val: audio, labels, names (7,200 clips)."""
    ta, ty, tn = load_split("train", root)
    va, vy, vn = load_split("val", root)
    return np.concatenate([ta, va]), np.concatenate([ty, vy]), tn + vn


def _claim(path: Path) -> bool:
    """Creates the claim file for a job; False if a live process holds it."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(path.read_text() or 0)
            os.kill(pid, 0)
            return False
        except (ValueError, ProcessLookupError):
            path.unlink(missing_ok=True)  # its process is gone: take the job over
            return _claim(path)
        except PermissionError:
            return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def run_job(member: str, k: int, fold: np.ndarray, seed: int, root: Path, out: Path,
            data: tuple[np.ndarray, np.ndarray, list[str]], test: tuple[np.ndarray, np.ndarray],
            epochs: int | None = None) -> Path:
    """Trains member's recipe on the clips whose ``fold`` is not k; writes its int8 file, card and .npz."""
    from trainers.export import VERSION, _jsonable
    from trainers.quantize import CALIBRATION_CLIPS, convert
    from trainers.recipes import RECIPES
    from trainers.train import fit_recipe

    audio, labels, names = data
    folds = int(fold.max()) + 1
    held, kept = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
    r = dataclasses.replace(RECIPES[member], name=f"{member}_f{k}")
    t0 = time.time()
    model, clean, history = fit_recipe(r, root, epochs, train_set=(audio[kept], labels[kept]),
                                       val_set=(audio[held], labels[held]), select_last=True)
    seconds = time.time() - t0
    pick = np.sort(np.random.default_rng(r.seed).choice(len(clean), CALIBRATION_CLIPS, replace=False))
    content = convert(model, clean[pick])
    path = out / f"{r.name}.tflite"
    path.write_bytes(content)
    card = ModelCard(
        name=r.name, version=VERSION, architecture=r.architecture, params=_jsonable(r.params),
        num_parameters=int(model.count_params()),
        feature=r.feature, input_shape=[1, *r.feature.shape], input_dtype="int8", labels=list(LABELS),
        quantization="int8", metrics={}, output="logits",
        train_command=f"python -m trainers.kfold --members {member} --folds {folds} --seed {seed}"
                      + (f" --epochs {epochs}" if epochs else ""),
        description=f"Fold model: the {member} recipe trained on folds != {k} of {folds} over train+val "
                    f"(last epoch), int8 full-integer ({CALIBRATION_CLIPS} calibration clips of its folds).",
        training={"recipe": member, "epochs": epochs or r.epochs, "fold": k, "folds": folds, "fold_seed": seed,
                  "train_clips": int(len(kept)), "selection": "last epoch", "heldout_history": [round(a, 4) for a in history],
                  "train_seconds": round(seconds, 1)},
        **file_facts(content))
    card.save(path.with_suffix(".json"))
    runtime = KwsModel(path)
    oof = runtime.predict(log_mel(audio[held], r.feature))
    test_probs = runtime.predict(log_mel(test[0], r.feature))
    card.metrics = {"heldout_accuracy": round(float((oof.argmax(-1) == labels[held]).mean()), 5),
                    "test_accuracy": round(float((test_probs.argmax(-1) == test[1]).mean()), 5)}
    card.save(path.with_suffix(".json"))
    npz = out / f"{r.name}.npz"
    np.savez(npz, index=held, names=np.array([names[i] for i in held]), probs=oof, labels=labels[held],
             test_probs=test_probs)
    log.info("%s: held-out fold %.4f, test %.4f, %.0f s", r.name, card.metrics["heldout_accuracy"],
             card.metrics["test_accuracy"], seconds)
    return npz


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/kfold", help="fold models, their cards and OOF .npz (default: %(default)s)")
    ap.add_argument("--members", nargs="+", default=list(MEMBERS),
                    help="recipes to retrain per fold (default: the shipped ensemble's, %(default)s)")
    ap.add_argument("--folds", type=int, default=3, help="k (default: %(default)s: each fold model trains on "
                    "4,800 clips, three quarters of the train split)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default: %(default)s)")
    ap.add_argument("--epochs", type=int, help="override the recipes' epoch counts (for smoke tests)")
    ap.add_argument("--data-dir", help="folder holding mini_speech_commands/ (default: $KWS_DATA_DIR, ./data, ...)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.folds < 2:
        ap.error("--folds must be at least 2")
    from trainers.recipes import RECIPES  # imports TensorFlow (the architectures)

    unknown = [m for m in args.members if m not in RECIPES]
    if unknown:
        ap.error(f"unknown recipes {unknown}; choose from {sorted(RECIPES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = find_dataset(args.data_dir)
    data = pool(root)
    test_audio, test_labels, _ = load_split("test", root)
    fold = fold_of(data[1], args.folds, args.seed)
    meta = {"folds": args.folds, "seed": args.seed, "pool": "kws_train_split.txt + kws_val_split.txt",
            "clips": len(data[1]), "fold_of": fold.tolist(),
            "names_sha256": hashlib.sha256("\n".join(data[2]).encode()).hexdigest()}
    meta_path = out / "folds.json"
    if meta_path.exists() and json.loads(meta_path.read_text())["fold_of"] != meta["fold_of"]:
        raise SystemExit(f"{out} holds folds of another --folds/--seed; pick another --out")
    meta_path.write_text(json.dumps(meta))
    # The costliest recipes first, so two workers finish close together.
    jobs = [(m, k) for m in reversed(args.members) for k in range(args.folds)]
    for member, k in jobs:
        name = f"{member}_f{k}"
        if (out / f"{name}.npz").exists():
            trained = json.loads((out / f"{name}.json").read_text())["training"]["epochs"]
            if trained != (args.epochs or RECIPES[member].epochs):
                raise SystemExit(f"{out / name}.tflite was trained for {trained} epochs, not "
                                 f"{args.epochs or RECIPES[member].epochs}: pick another --out")
            continue
        claim = out / f"{name}.claim"
        if not _claim(claim):
            log.info("%s: another process is training it", name)
            continue
        try:
            run_job(member, k, fold, args.seed, root, out, data, (test_audio, test_labels), args.epochs)
        finally:
            claim.unlink(missing_ok=True)
    missing = [f"{m}_f{k}" for m, k in jobs if not (out / f"{m}_f{k}.npz").exists()]
    if missing:
        log.warning("%d of %d fold models not done yet (held by another process): %s", len(missing), len(jobs),
                    ", ".join(missing))
        return 1
    log.info("all %d fold models done: python -m trainers.stack --kfold %s", len(jobs), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
