"""Trains shipped models: `python -m trainers.train little big ...` (or `--all`).

Trains on the train split only, keeps the epoch with the best val accuracy, exports .tflite and writes
its model card (val and test accuracy measured on the exported model with the kws runtime).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path

import trainers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from kws_rpc.audio.features import FeatureConfig, log_mel, normalize_peak
from kws_rpc.lab.data import LABELS, find_dataset, load_noise, load_split
from kws_rpc.model.kws_model import KwsModel
from trainers.architectures import REGISTRY
from trainers.augment import augment_audio, mixup, spec_augment
from trainers.export import export
from trainers.recipes import RECIPES, SHIPPED, Recipe

log = logging.getLogger("trainers")


def build_model(r: Recipe, mean: np.ndarray, var: np.ndarray) -> tf.keras.Model:
    """Keras model from raw features (frames, coeffs) to logits; normalisation is part of the model."""
    inp = tf.keras.Input(shape=r.feature.shape, name="x")
    x = tf.keras.layers.Normalization(axis=-1, mean=mean, variance=var, name="norm")(inp)
    x = tf.keras.layers.Reshape((*r.feature.shape, 1), name="hw1")(x)
    arch = REGISTRY[r.architecture]
    return tf.keras.Model(inp, arch.build(r.params, x, len(r.labels)), name=r.name)


def widen_head(model: tf.keras.Model, n: int, rng: np.random.Generator) -> tf.keras.Model:
    """The model with its last Dense layer grown to n outputs: the old outputs keep their weights, the new
    ones start from small random weights and the old outputs' mean bias."""
    head = model.layers[-1]
    if not isinstance(head, tf.keras.layers.Dense):
        raise ValueError(f"{model.name}: the last layer is {type(head).__name__}, not Dense")
    w, b = head.get_weights()
    new = tf.keras.layers.Dense(n, name="f_wide")
    out = new(head.input)
    extra = n - w.shape[1]
    new.set_weights([np.concatenate([w, rng.normal(0, w.std(), (w.shape[0], extra)).astype(np.float32)], 1),
                     np.concatenate([b, np.full(extra, b.mean(), np.float32)])])
    return tf.keras.Model(model.input, out, name=model.name)


def _prunable(layer: tf.keras.layers.Layer) -> bool:
    return isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense)) and not isinstance(
        layer, tf.keras.layers.DepthwiseConv2D
    )


class WeightAverage(tf.keras.callbacks.Callback):
    """An exponential moving average of every model weight (batch-norm statistics included), updated
    after each training batch: w_avg <- decay * w_avg + (1 - decay) * w. The average generalizes better
    than the last weights of a noisy small-data run (Polyak averaging; cf. SWA, Izmailov et al. 2018)."""

    def __init__(self, decay: float) -> None:
        super().__init__()
        self.decay, self.average = decay, None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        w = self.model.get_weights()
        if self.average is None:
            self.average = w
        else:
            for a, x in zip(self.average, w):
                a *= self.decay
                a += (1.0 - self.decay) * x

    @contextlib.contextmanager
    def applied(self):
        """The model holds the averaged weights inside the block, its training weights again after."""
        if self.average is None:
            yield
            return
        raw = self.model.get_weights()
        self.model.set_weights(self.average)
        try:
            yield
        finally:
            self.model.set_weights(raw)


def _fit(model: tf.keras.Model, r: Recipe, epochs: int, data: dict, rng: np.random.Generator,
         desc: str, callbacks: list | None = None, select_from: int = 0) -> list[float]:
    """Trains epoch by epoch on freshly augmented features; restores the best val epoch >= select_from
    (with r.ema, the best epoch of the weight average: validated, selected and restored as averaged)."""
    best, best_w, history = -1.0, None, []
    average = WeightAverage(r.ema) if r.ema > 0 else None
    callbacks = [*(callbacks or []), *([average] if average else [])]
    bar = tqdm(range(epochs), desc=desc, unit="epoch")
    for epoch in bar:
        if data.get("listen") is not None:  # a fresh draw of keywords, unknowns and silence, noise mixed in
            audio, targets = data["listen"].epoch(rng)
        else:
            audio, targets = augment_audio(data["train_audio"], data["noise"], rng, r.augment), data["train_onehot"]
        audio, targets = mixup(audio, targets, rng, r.augment)
        clean_feats = feats = log_mel(audio, r.feature)
        if r.codec_prob:
            feats = codec_round_trip(feats, r.feature, np.flatnonzero(rng.random(len(feats)) < r.codec_prob))
        feats = spec_augment(feats, rng, r.augment, data["mean"])
        if data["teachers"]:
            soft = teacher_targets(data["teachers"], audio, r.distill_temperature, {r.feature: clean_feats})
            targets = (1 - r.distill_weight) * targets + r.distill_weight * soft
        model.fit(feats, targets, batch_size=r.batch_size, epochs=1, shuffle=True,
                  verbose=0, callbacks=callbacks)
        with average.applied() if average else contextlib.nullcontext():
            pred = model.predict(data["val_feats"], batch_size=256, verbose=0).argmax(-1)
            acc = float((pred == data["val_labels"]).mean())
            history.append(acc)
            if epoch >= select_from and acc >= best:
                best, best_w = acc, model.get_weights()
        bar.set_postfix(val=f"{acc:.4f}", best=f"{best:.4f}" if best >= 0 else "-")  # "-": no epoch selectable yet
    if best_w is not None:
        model.set_weights(best_w)
    return history


def codec_round_trip(feats: np.ndarray, cfg: FeatureConfig, which: np.ndarray | range) -> np.ndarray:
    """A copy of feats with the clips ``which`` replaced by what the server decodes from the edge's
    mfcc-dct request for them (kws_rpc.wire.encodings.features_request, 300 B at most), so the model learns
    the codec's loss as one more augmentation."""
    from kws_rpc.wire.codec import tensor_from_proto
    from kws_rpc.wire.encodings import features_request

    feats = feats.copy()
    for i in which:
        feats[i] = tensor_from_proto(features_request(feats[i], "mfcc-dct", f"train-{i}", cfg).features.tensor)
    return feats


def teacher_targets(teachers: list[KwsModel], audio: np.ndarray, temperature: float,
                    known: dict[FeatureConfig, np.ndarray] | None = None) -> np.ndarray:
    """Mean teacher probabilities, softened: p ** (1/T), renormalised (= softmax(logits / T)).
    ``known`` holds features of ``audio`` already computed (the student's, unaugmented), by config."""
    feats = dict(known or {})  # teachers sharing a feature config share its features
    for t in teachers:
        if t.card.feature not in feats:
            feats[t.card.feature] = t.features(audio)
    p = np.mean([t.predict(feats[t.card.feature]) for t in teachers], axis=0)
    if temperature != 1.0:
        p = np.power(np.maximum(p, 1e-12), 1.0 / temperature)
        p /= p.sum(axis=-1, keepdims=True)
    return p.astype(np.float32)


def _compile(model: tf.keras.Model, r: Recipe, lr: float, steps: int) -> None:
    schedule = tf.keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps, alpha=0.01)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(schedule),
        loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=r.label_smoothing),
    )


def fit_recipe(r: Recipe, root: Path, epochs: int | None = None, teacher_dir: Path = Path("models"),
               train_set: tuple[np.ndarray, np.ndarray] | None = None,
               val_set: tuple[np.ndarray, np.ndarray] | None = None,
               select_last: bool = False) -> tuple[tf.keras.Model, np.ndarray, list[float]]:
    """Trains recipe r: the Keras model (logits out), the clean training features (for int8 calibration)
    and the val accuracy of every epoch. By default on the train split, keeping the best val epoch;
    ``train_set`` / ``val_set`` (audio, labels) replace the splits (trainers.kfold's folds), and
    ``select_last`` keeps the last epoch, so the clips scored each epoch choose nothing."""
    tf.keras.utils.set_random_seed(r.seed)
    rng = np.random.default_rng(r.seed)
    train_audio, train_labels = train_set if train_set is not None else load_split("train", root)[:2]
    if r.feature.peak_normalize:  # level the clean clips before noise is added (features level them again)
        train_audio = normalize_peak(train_audio, r.feature.peak_normalize)
    val_audio, val_labels = val_set if val_set is not None else load_split("val", root)[:2]
    clean = log_mel(train_audio, r.feature)
    if r.labels[: len(LABELS)] != LABELS:
        raise ValueError(f"{r.name}: the first labels must be the keywords in kws_rpc.model.card.LABELS order")
    data = {
        "train_audio": train_audio, "noise": load_noise(root),
        "train_onehot": np.eye(len(r.labels), dtype=np.float32)[train_labels],
        "val_feats": log_mel(val_audio, r.feature), "val_labels": val_labels,
        "mean": clean.mean(axis=(0, 1)), "var": clean.var(axis=(0, 1)),
        "teachers": [KwsModel(teacher_dir / f"{t}.tflite") for t in r.teachers],
    }
    if r.listen is not None:
        from trainers.listen import ListenData, selection_set

        data["listen"] = ListenData(root, r.listen, r.augment, train_audio, train_labels, teacher_dir)
        sel_audio, data["val_labels"] = selection_set(root, r.listen, val_audio, val_labels, teacher_dir)
        data["val_feats"] = log_mel(sel_audio, r.feature)
    if r.codec_prob:  # select on exact and mfcc-dct-decoded val features alike (1,600 items)
        coded = codec_round_trip(data["val_feats"], r.feature, range(len(val_labels)))
        data["val_feats"] = np.concatenate([data["val_feats"], coded])
        data["val_labels"] = np.concatenate([val_labels, val_labels])
    epochs = epochs or r.epochs
    steps = int(np.ceil(len(train_audio) / r.batch_size))
    if r.listen is not None and r.listen.stream is not None:
        # the decay spans the epochs actually run (little_listen and big_listen, trained before, count the
        # train split's steps per epoch and so reach the floor at ~77 % of their epochs; kept, to reproduce)
        steps = int(np.ceil(data["listen"].size / r.batch_size))
    if r.init:  # the shipped float model, rebuilt with its weights (batch norm folded, no dropout)
        from trainers.from_tflite import rebuild

        model = rebuild(teacher_dir / f"{r.init}.tflite")[0]
        if model.output_shape[-1] != len(r.labels):
            model = widen_head(model, len(r.labels), rng)
    else:
        model = build_model(r, data["mean"], data["var"])
    callbacks, select_from = [], 0
    if r.prune_sparsity > 0:
        model, callbacks, select_from = _with_pruning(model, r, steps, epochs)
    if select_last:
        select_from = epochs - 1
    _compile(model, r, r.lr, steps * epochs)
    history = _fit(model, r, epochs, data, rng, f"{r.name}: train", callbacks, select_from)
    if r.prune_sparsity > 0:
        import tensorflow_model_optimization as tfmot

        model = tfmot.sparsity.keras.strip_pruning(model)
    if r.listen is not None:  # int8 calibration on what the model will hear: noisy words, unknowns, silence
        clean = log_mel(data["listen"].epoch(np.random.default_rng(r.seed + 1))[0], r.feature)
    return model, clean, history


def train(r: Recipe, root: Path, out_dir: Path, epochs: int | None = None, teacher_dir: Path = Path("models")) -> Path:
    t0 = time.time()
    epochs = epochs or r.epochs
    model, clean, history = fit_recipe(r, root, epochs, teacher_dir)
    seconds = time.time() - t0
    backup = Path(tempfile.gettempdir()) / f"{r.name}.weights.h5"  # a failed export need not cost the run
    model.save_weights(str(backup))
    log.info("%s: trained weights kept in %s until exported", r.name, backup)
    training = {
        "seed": r.seed, "epochs": epochs, "batch_size": r.batch_size, "lr": r.lr,
        "label_smoothing": r.label_smoothing, "augment": dataclasses.asdict(r.augment),
        "init": r.init or None, "codec_prob": r.codec_prob, "ema": r.ema or None,
        "teachers": list(r.teachers), "distill_weight": r.distill_weight,
        "distill_temperature": r.distill_temperature, "prune_sparsity": r.prune_sparsity,
        "prune_ramp_epochs": list(r.prune_ramp) if r.prune_sparsity else None,
        "val_history": [round(a, 4) for a in history],
        "train_seconds": round(seconds, 1), "train_split": "kws_train_split.txt (6400 clips)",
        **({"listen": dataclasses.asdict(r.listen), "epoch_seconds": round(seconds / epochs, 1),
            "selection_set": "trainers.listen.selection_set (val: clean, 10 dB, 0 dB, unknown, silence"
                             + (", hard negatives of keyword-free val streams)" if r.listen.stream else ")")}
           if r.listen is not None else {}),
        "selection": ("best accuracy on the listening selection set (val only)" if r.listen is not None
                      else "best val accuracy (kws_val_split.txt)")
                     + (" among epochs at full sparsity" if r.prune_sparsity else ""),
    }
    command = "python -m trainers.train " + shlex.join(sys.argv[1:]) if sys.argv[1:] else f"python -m trainers.train {r.name}"
    return export(model, r, clean, root, out_dir, training, command)


def _with_pruning(model: tf.keras.Model, r: Recipe, steps: int, epochs: int) -> tuple[tf.keras.Model, list, int]:
    """Gradual magnitude pruning (Zhu & Gupta 2017) inside training: sparsity ramps from 0 at epoch
    prune_ramp[0] to prune_sparsity at prune_ramp[1]; only epochs at full sparsity may be selected.
    DepthwiseConv2D is left dense (tfmot cannot prune it; it is a small share of the weights)."""
    import tensorflow_model_optimization as tfmot

    start, end = (min(e, epochs - 1) for e in r.prune_ramp)
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, r.prune_sparsity, begin_step=start * steps,
                                                    end_step=max(end * steps, start * steps + steps // 4), frequency=steps // 4)

    def wrap(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
        return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule) if _prunable(layer) else layer

    pruned = tf.keras.models.clone_model(model, clone_function=wrap)
    return pruned, [tfmot.sparsity.keras.UpdatePruningStep()], end


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help=f"recipes to train: {', '.join(RECIPES)}")
    ap.add_argument("--all", action="store_true", help=f"train the shipped models: {', '.join(SHIPPED)} (in that order: "
                    "little is distilled from the other three)")
    ap.add_argument("--data-dir", help="folder holding mini_speech_commands/ (default: $KWS_DATA_DIR, ./data, ...)")
    ap.add_argument("--download", action="store_true", help="download the official zip if no copy is found")
    ap.add_argument("--out", default="models", help="where .tflite files and cards go (default: models/)")
    ap.add_argument("--epochs", type=int, help="override the recipe's epoch count (for smoke tests)")
    ap.add_argument("--as", dest="as_name", metavar="NAME",
                    help="export one recipe under another name, e.g. a candidate as the shipped little")
    ap.add_argument("--seed", type=int, help="override the recipe's seed (seed spreads: --seed 3 --as big_s3)")
    ap.add_argument("--teachers", default="models", help="folder of the shipped teacher models (distillation)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    names = list(SHIPPED) if args.all else args.models
    unknown = [n for n in names if n not in RECIPES]
    if not names or unknown:
        ap.error(f"name recipes from {list(RECIPES)} or pass --all" + (f" (unknown: {unknown})" if unknown else ""))
    if args.as_name and len(names) != 1:
        ap.error("--as renames exactly one recipe")
    root = find_dataset(args.data_dir, allow_download=args.download)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        recipe = dataclasses.replace(RECIPES[name], name=args.as_name) if args.as_name else RECIPES[name]
        if args.seed is not None:
            recipe = dataclasses.replace(recipe, seed=args.seed)
        path = train(recipe, root, out, args.epochs, Path(args.teachers))
        log.info("wrote %s", path)


if __name__ == "__main__":
    main()
