"""int8 sibling of a shipped float model: `python -m trainers.quantize models/big.tflite` writes
models/big_int8.tflite and its card, beside the float model, from the same weights.

The float graph is rebuilt in Keras (trainers.from_tflite; its outputs are checked against the .tflite),
then quantized after training to int8 full-integer (per-channel weights, int8 input, int8 logits out:
the runtime applies softmax in float32), calibrated on 500 train clips. The card records val and test
accuracy, the agreement with the float model on test with a paired (McNemar) test, and both models'
invoke time, one clip at a time on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

import trainers  # noqa: F401  (TF environment)

import numpy as np
import tensorflow as tf

from kws_rpc.audio.features import log_mel
from kws_rpc.lab.data import find_dataset, load_split
from kws_rpc.lab.stats import mcnemar
from kws_rpc.model.card import file_facts
from kws_rpc.model.kws_model import KwsModel, softmax
from trainers.export import strip_names
from trainers.from_tflite import rebuild

log = logging.getLogger("trainers.quantize")
CALIBRATION_CLIPS = 500


_TIMER = """
import sys, time, numpy as np
from kws_rpc.model.interpreter import interpreter_class
from kws_rpc.model.kws_model import KwsModel
m = KwsModel(sys.argv[1])
x = np.random.default_rng(0).normal(size=(64, *m.feature_config.shape)).astype(np.float32)
for i in range(20):
    m.predict(x[i % 64][None])
t = []
for i in range(int(sys.argv[2])):
    s = time.perf_counter(); m.predict(x[i % 64][None]); t.append(time.perf_counter() - s)
print(interpreter_class().__module__, 1000 * float(np.median(t)))
"""


def invoke_ms(path: Path, repeats: int = 500) -> float:
    """Median time of one single-clip predict (input quantization and softmax included), measured in a
    child process on the production runtime (ai_edge_litert): this process has TensorFlow loaded."""
    out = subprocess.run([sys.executable, "-c", _TIMER, str(path), str(repeats)], capture_output=True, text=True,
                         check=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}).stdout.split()
    log.info("%s: %s ms per clip on %s", path, out[1], out[0])
    return float(out[1])


def convert(keras: tf.keras.Model, calibration: np.ndarray) -> bytes:
    def representative():
        for x in calibration:
            yield [x[None].astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(keras)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return strip_names(conv.convert())


def quantize(float_path: Path, out: Path, root: Path, seed: int = 0) -> dict:
    ref = KwsModel(float_path)
    cfg = ref.feature_config
    keras, _ = rebuild(float_path)
    val_audio, val_y, _ = load_split("val", root)
    test_audio, test_y, _ = load_split("test", root)
    val, test = log_mel(val_audio, cfg), log_mel(test_audio, cfg)
    gap = float(np.abs(softmax(keras.predict(val, batch_size=256, verbose=0)) - ref.predict(val)).max())
    if gap > 1e-3:
        raise RuntimeError(f"the rebuilt Keras model differs from {float_path} by {gap:.2g} in probability")
    train_audio, _, _ = load_split("train", root)
    pick = np.random.default_rng(seed).choice(len(train_audio), CALIBRATION_CLIPS, replace=False)
    content = convert(keras, log_mel(train_audio[np.sort(pick)], cfg))
    out.write_bytes(content)
    card = dataclasses.replace(
        ref.card, name=out.stem, quantization="int8", input_dtype="int8", output="logits", metrics={},
        train_command="python -m trainers.quantize " + shlex.join(sys.argv[1:] or [str(float_path)]),
        description=f"{ref.card.description} int8 full-integer sibling of {float_path.name} (same weights, "
                    f"post-training quantization calibrated on {CALIBRATION_CLIPS} train clips).",
        training={"quantized_from": float_path.name, "float_sha256": ref.card.sha256,
                  "rebuilt_keras_max_probability_gap_val": round(gap, 8), "calibration_clips": CALIBRATION_CLIPS,
                  "calibration_seed": seed},
        **file_facts(content))
    card.save(out.with_suffix(".json"))
    q = KwsModel(out)
    f_right = ref.predict(test).argmax(-1) == test_y
    q_right = q.predict(test).argmax(-1) == test_y
    card.metrics = {
        "val_accuracy": round(float((q.predict(val).argmax(-1) == val_y).mean()), 5),
        "test_accuracy": round(float(q_right.mean()), 5),
        "float_test_accuracy": round(float(f_right.mean()), 5),
        "test_agreement_with_float": round(float((q.predict(test).argmax(-1) == ref.predict(test).argmax(-1)).mean()), 5),
        "test_mcnemar_p_vs_float": round(mcnemar(q_right, f_right).p, 4),
        "invoke_ms": round(invoke_ms(out), 3),
        "float_invoke_ms": round(invoke_ms(float_path), 3),
    }
    card.save(out.with_suffix(".json"))
    log.info("%s: %s", out, card.metrics)
    return card.metrics


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="float .tflite files with their cards, e.g. models/big.tflite")
    ap.add_argument("--data-dir", help="folder holding mini_speech_commands/ (default: $KWS_DATA_DIR, ./data, ...)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    root = find_dataset(args.data_dir)
    for m in args.models:
        path = Path(m)
        metrics = quantize(path, path.with_name(f"{path.stem}_int8.tflite"), root)
        print(f"{path.stem}_int8: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
