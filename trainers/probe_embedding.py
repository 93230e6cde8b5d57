"""Probe: is a member trained on other data (Google's speech_embedding) right where big is wrong?

    pip install onnxruntime && pip download openwakeword==0.4.0 --no-deps -d /tmp/oww
    python -m trainers.probe_embedding --wheel /tmp/oww/openwakeword-0.4.0-py3-none-any.whl

Issue 12 asks for an ensemble member that gets a good share of big's errors right. Our members are all
trained on the same 6,400 clips, and they make the same mistakes (member_cnn and member_dscnn each get 3
of big's 22 test errors right). A model pretrained on other speech is the most different member one can
have. The openWakeWord 0.4.0 wheel (PyPI) carries Google's speech_embedding network (Lin et al., 2020,
"Training keyword spotters with limited and synthesized speech data", trained on ~200M clips of other
speech) as two ONNX files: a 32-bin log-mel front end and the embedding (one 96-d vector per 76 frames,
every 8 frames). This probe pads each clip by 300 ms on both sides (11 embeddings a clip), trains a
small head (two 1-D convolutions over the 11 vectors, max-pooled, dense) on the train split, keeps the
epoch with the best val accuracy, and reports it against the shipped big with the paired test and error
overlap of `kws_rpc.lab.compare`, and the log-mean of big, member_cnn, member_dscnn and the probe with the
probe's temperature chosen on val.

It is a probe, not a member: the server and workers run TFLite on our own features, while this needs
onnxruntime and the embedding's own front end, and the openWakeWord README puts its bundled models
under CC BY-NC-SA 4.0 (Google's TF Hub original is Apache 2.0), which an open project cannot ship
without sorting out. Results: README, "Candidates".
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse
import json
import logging
import sys
import zipfile
from pathlib import Path

import numpy as np

from kws_rpc.lab import stats
from kws_rpc.lab.data import cache_dir, find_dataset, load_noise, load_split
from kws_rpc.lab.stats import overlap
from kws_rpc.model import ensemble
from kws_rpc.model.kws_model import KwsModel, softmax

PAD = 4800  # 300 ms of silence on each side: 1.6 s -> 11 embedding windows
WINDOW, STEP = 76, 8  # the embedding's input frames and its stride (openWakeWord's framing)
MEMBERS = ("big", "member_cnn", "member_dscnn")
TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 16.0)


def _sessions(wheel: Path, dest: Path) -> tuple[object, object]:
    try:
        import onnxruntime as ort
    except ImportError:
        sys.exit("this probe needs onnxruntime: pip install onnxruntime")
    names = {m: f"openwakeword/resources/models/{m}.onnx" for m in ("melspectrogram", "embedding_model")}
    with zipfile.ZipFile(wheel) as z:
        for n in names.values():
            z.extract(n, dest)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return tuple(ort.InferenceSession(str(dest / n), so, providers=["CPUExecutionProvider"])  # type: ignore[return-value]
                 for n in names.values())


def embed(audio: np.ndarray, mel: object, emb: object, batch: int = 64) -> np.ndarray:
    """(N, 16000) float audio in [-1, 1] -> (N, windows, 96) speech embeddings."""
    from tqdm import tqdm

    out = []
    for i in tqdm(range(0, len(audio), batch), desc="embedding", unit="batch"):
        x = (np.pad(audio[i:i + batch], ((0, 0), (PAD, PAD))) * 32767.0).astype(np.float32)
        spec = mel.run(None, {"input": x})[0].reshape(len(x), -1, 32) / 10 + 2  # type: ignore[attr-defined]
        starts = range(0, spec.shape[1] - WINDOW + 1, STEP)
        win = np.stack([spec[:, s:s + WINDOW] for s in starts], 1)
        b, w = win.shape[:2]
        e = emb.run(None, {"input_1": win.reshape(b * w, WINDOW, 32, 1).astype(np.float32)})[0]  # type: ignore[attr-defined]
        out.append(e.reshape(b, w, -1))
    return np.concatenate(out)


def train_head(x: dict[str, np.ndarray], y: dict[str, np.ndarray], seed: int, epochs: int) -> dict[str, np.ndarray]:
    """Logits of a small head trained on train, at the epoch of best val accuracy."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    L = tf.keras.layers
    inp = L.Input(x["train"].shape[1:])
    h = L.Dropout(0.2)(inp)
    h = L.Dropout(0.3)(L.Conv1D(128, 3, padding="same", activation="relu")(h))
    h = L.Conv1D(128, 3, padding="same", activation="relu")(h)
    h = L.Dropout(0.3)(L.GlobalMaxPooling1D()(h))
    model = tf.keras.Model(inp, L.Dense(8)(h))
    model.compile(tf.keras.optimizers.Adam(1e-3),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    best = tf.keras.callbacks.ModelCheckpoint(str(cache_dir() / "probe_head.weights.h5"), monitor="val_accuracy",
                                              save_best_only=True, save_weights_only=True)
    model.fit(x["train"], y["train"], epochs=epochs, batch_size=64, validation_data=(x["val"], y["val"]),
              callbacks=[best], verbose=0)
    model.load_weights(best.filepath)
    return {s: model.predict(x[s], verbose=0).astype(np.float64) for s in ("val", "test")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--wheel", type=Path, required=True, help="openwakeword-0.4.0-py3-none-any.whl (pip download)")
    ap.add_argument("--data-dir", default=None, help="folder holding mini_speech_commands/")
    ap.add_argument("--models", type=Path, default=Path("models"), help="the shipped models to compare with")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--augment", type=int, default=0, metavar="N",
                    help="also train on N augmented copies of each train clip (trainers.augment's time shift, "
                         "gain and background noise; about 2.5 min of embedding per copy on 2 cores)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = find_dataset(args.data_dir)
    mel, emb = _sessions(args.wheel, cache_dir() / "openwakeword")

    feats, audio, y = {}, {}, {}
    for s in ("train", "val", "test"):
        audio[s], y[s], _ = load_split(s, root)
        feats[s] = embed(audio[s], mel, emb)
    if args.augment:
        from trainers.augment import AugmentConfig, augment_audio

        rng, noise = np.random.default_rng(args.seed), load_noise(root)
        copies = [embed(augment_audio(audio["train"], noise, rng, AugmentConfig()), mel, emb)
                  for _ in range(args.augment)]
        feats["train"] = np.concatenate([feats["train"], *copies])
        y["train"] = np.tile(y["train"], args.augment + 1)
    mu, sd = feats["train"].mean((0, 1)), feats["train"].std((0, 1)) + 1e-6
    logits = train_head({s: (f - mu) / sd for s, f in feats.items()}, y, args.seed, args.epochs)

    members = {m: KwsModel(args.models / f"{m}.tflite") for m in MEMBERS}
    probs = {s: {m: km.predict(km.features(audio[s])).astype(np.float64) for m, km in members.items()}
             for s in ("val", "test")}

    def log_mean(s: str, t: float) -> np.ndarray:
        votes = np.stack([*probs[s].values(), softmax(logits[s] / t)], axis=1)  # (clips, models, labels)
        return ensemble.decide_all("log_mean", votes) == y[s]

    t_val = max(TEMPERATURES, key=lambda t: (log_mean("val", t).mean(), -t))
    report: dict = {"temperature_chosen_on_val": t_val, "augmented_copies": args.augment}
    for s in ("val", "test"):
        correct = {m: p.argmax(1) == y[s] for m, p in probs[s].items()}
        correct["embedding"] = logits[s].argmax(1) == y[s]
        correct["log_mean4"] = log_mean(s, t_val)
        rows = {}
        for name, c in correct.items():
            m = stats.mcnemar(c, correct["big"])
            rows[name] = {"accuracy": float(c.mean() * 100), "b": m.b, "c": m.c, "p": m.p}
        ov = overlap({k: correct[k] for k in ("big", "member_cnn", "member_dscnn", "embedding")})
        report[s] = {"models": rows, "right_on_big_errors": {k: v["b_right_on_a_errors"] for k, v in ov["big"].items()},
                     "big_errors": ov["big"]["big"]["a_errors"]}
        print(f"\n{s}: model accuracy, b / c against big, p; right on big's {report[s]['big_errors']} errors")
        for name, r in rows.items():
            right = report[s]["right_on_big_errors"].get(name, "")
            print(f"  {name:14s} {r['accuracy']:7.3f} %  {r['b']:3d} / {r['c']:<3d} p={r['p']:.3g}  {right}")
    print(f"\nlog_mean4 = big, member_cnn, member_dscnn and the embedding head at temperature {t_val} (chosen on val)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
