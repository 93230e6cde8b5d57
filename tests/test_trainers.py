"""Each architecture, on toy parameters, converts to TFLite and agrees with Keras (float within 1e-4,
int8 within quantization error).

Keras, the converter and the trainers run in the tf_child process (tests/tf_child.py): the functions
below marked "child" import TensorFlow there and send back plain data. The exported TFLite models are run
here, by kws_rpc.model.interpreter, so they are checked on the interpreter users run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kws_rpc.model.interpreter import make_interpreter
from tf_child import TfChild

REPO = Path(__file__).resolve().parent.parent
# Architecture modules, found without importing them (they import TensorFlow); REGISTRY is checked to match.
ARCHITECTURES = sorted(p.stem for p in (REPO / "trainers" / "architectures").glob("*.py") if p.stem != "__init__")
TOY: dict[str, dict[str, Any]] = {  # small Params per architecture; one missing here builds its defaults
    "dscnn": {"filters": 8, "blocks": 1},
    "resnet": {"stem": 4, "channels": (4, 8), "blocks_per_stage": 1},
    "cnn": {"channels": (4, 8)},
}


def toy_recipe(arch: str, quant: str, **kw: Any) -> Any:
    """Child: a one-epoch Recipe on toy parameters, with the shipped feature config of its kind."""
    from trainers.architectures import REGISTRY
    from trainers.recipes import LITTLE_FEATURES, SHARED_FEATURES, Recipe

    feature = LITTLE_FEATURES if quant == "int8" else SHARED_FEATURES
    return Recipe(name="toy", architecture=arch, params=REGISTRY[arch].Params(**TOY.get(arch, {})),
                  feature=feature, epochs=1, description="toy", quantization=quant, **kw)


def toy_model(r: Any, seed: int) -> tuple[Any, np.ndarray]:
    """Child: the Keras model of a toy recipe and 64 random inputs it is calibrated on."""
    import tensorflow as tf

    from trainers.train import build_model

    x = np.random.default_rng(seed).normal(size=(64, *r.feature.shape)).astype(np.float32)
    tf.keras.utils.set_random_seed(0)
    return build_model(r, x.mean(axis=(0, 1)), x.var(axis=(0, 1))), x


def keras_and_tflite(arch: str, quant: str, output: str = "probabilities",
                     seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Child: (TFLite file, inputs, Keras outputs on the first 8): probabilities, or logits as the model ends."""
    import tensorflow as tf

    from trainers.export import to_tflite

    r = toy_recipe(arch, quant, output=output)
    model, x = toy_model(r, seed)
    y = model(x[:8], training=False)
    return to_tflite(model, r, x), x[:8], (tf.nn.softmax(y) if output == "probabilities" else y).numpy()


def run_tflite(content: bytes, x: np.ndarray) -> np.ndarray:
    """The exported model on each row of x, one at a time, dequantized: on this process's runtime."""
    interp = make_interpreter(content)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    rows = []
    for xi in x[:, None]:
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            xi = np.clip(np.round(xi / scale + zero), -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], xi)
        interp.invoke()
        y = interp.get_tensor(out["index"])[0]
        if out["dtype"] == np.int8:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        rows.append(y)
    return np.stack(rows)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("quant", ["float32", "int8"])
def test_tflite_matches_keras(arch: str, quant: str, tf_child: TfChild) -> None:
    content, x, keras_probs = tf_child.run(keras_and_tflite, arch, quant)
    np.testing.assert_allclose(run_tflite(content, x), keras_probs, atol=1e-4 if quant == "float32" else 0.06)


def recipes_summary() -> dict[str, Any]:
    """Child: what the recipe test checks, as plain data."""
    from trainers.architectures import REGISTRY
    from trainers.recipes import RECIPES, SHIPPED

    return {"registry": sorted(REGISTRY),
            "recipes": {n: (r.architecture, r.quantization, dataclasses.is_dataclass(r.params))
                        for n, r in RECIPES.items()},
            "shipped": list(SHIPPED), "needs": {n: [*r.teachers, *([r.init] if r.init else []),
                                                    *([r.listen.stream.miner] if r.listen and r.listen.stream else [])]
                                                for n, r in RECIPES.items()}}


def test_recipes_are_consistent(tf_child: TfChild) -> None:
    summary = tf_child.run(recipes_summary)
    assert summary["registry"] == ARCHITECTURES, "every architecture module is registered, and tested above"
    assert summary["recipes"]["little"][1] == "int8"
    for name, (arch, _, typed) in summary["recipes"].items():
        assert arch in ARCHITECTURES and typed, name
    shipped = summary["shipped"]
    assert sorted(shipped) == sorted(p.stem for p in (REPO / "models").glob("*.tflite") if not p.stem.endswith("_int8"))
    for i, name in enumerate(shipped):  # make train: every model a recipe starts from or mines with is trained before it
        assert all(need in shipped[:i] for need in summary["needs"][name]), name


def test_logits_export_matches_keras_logits(tf_child: TfChild) -> None:
    content, x, keras_logits = tf_child.run(keras_and_tflite, "dscnn", "int8", "logits", 1)
    logits = run_tflite(content, x[:1])
    assert np.abs(logits - keras_logits[:1]).max() < 0.1 * np.abs(keras_logits[:1]).max() + 0.05


def teacher_targets_of(path: Path, audio: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, ...]:
    """Child: trainers.train.teacher_targets of a model, with two copies at T=1 and one at T=3, and at
    T=1 given ``known`` as the features already computed for the model's config."""
    from kws_rpc.model.kws_model import KwsModel
    from trainers.train import teacher_targets

    m = KwsModel(path)
    given = teacher_targets([m, m], audio, 1.0, {m.card.feature: known})
    return teacher_targets([m, m], audio, 1.0), teacher_targets([m], audio, 3.0), given


def test_teacher_targets_average_and_soften(little_path: Path, tf_child: TfChild) -> None:
    from kws_rpc.model.kws_model import KwsModel

    m = KwsModel(little_path)
    audio = np.random.default_rng(2).normal(scale=0.1, size=(4, 16000)).astype(np.float32)
    other = np.random.default_rng(3).normal(scale=0.3, size=(4, 16000)).astype(np.float32)
    plain, soft, given = tf_child.run(teacher_targets_of, little_path, audio, m.features(other))
    np.testing.assert_allclose(plain, m.predict(m.features(audio)), atol=1e-6)
    # features passed in for the teachers' config are used, not recomputed from the audio
    np.testing.assert_allclose(given, m.predict(m.features(other)), atol=1e-6)
    np.testing.assert_allclose(soft.sum(-1), 1.0, atol=1e-5)
    assert np.all(soft.max(-1) <= plain.max(-1) + 1e-6)  # a higher temperature flattens
    assert np.array_equal(soft.argmax(-1), plain.argmax(-1))


def export_toy(dataset_root: Path, out_dir: Path) -> tuple[Path, str]:
    """Child: exports a toy int8 model against the real splits within a 20,000-byte zlib budget; returns
    its path and the error an impossible 100-byte budget gives."""
    from trainers.export import export

    r = toy_recipe("dscnn", "int8", output="logits", zlib_budget=20_000)
    model, x = toy_model(r, 2)
    path = export(model, r, x, dataset_root, out_dir, {"epochs": 0}, "toy")
    try:
        export(model, dataclasses.replace(r, zlib_budget=100), x, dataset_root, out_dir, {}, "toy")
    except RuntimeError as e:
        return path, str(e)
    return path, ""


def test_export_keeps_the_best_conversion_within_budget(dataset_root: Path, tmp_path: Path,
                                                        tf_child: TfChild) -> None:
    from kws_rpc.model.card import load_card
    from kws_rpc.model.kws_model import KwsModel

    path, refused = tf_child.run(export_toy, dataset_root, tmp_path)
    assert "no conversion fits" in refused
    card = load_card(path, path.read_bytes())  # the card describes the file on disk
    assert card.training["quantization_granularity"] in ("per-channel", "per-tensor")
    assert card.zlib_bytes <= 20_000 and card.output == "logits"
    assert set(card.metrics) == {"val_accuracy", "test_accuracy", "val_keras_tflite_agreement"}
    assert 0.0 <= card.metrics["val_accuracy"] <= 1.0 and card.metrics["val_keras_tflite_agreement"] > 0.5
    assert KwsModel(path).labels == card.labels


def rebuilt_logits(path: str, x: np.ndarray) -> np.ndarray:
    """Child: the Keras model rebuilt from a shipped .tflite (trainers.from_tflite), on x."""
    from trainers.from_tflite import rebuild

    keras, _ = rebuild(path)
    return keras.predict(x, verbose=0)


@pytest.mark.parametrize("name", ["big", "member_cnn", "member_dscnn"])
def test_rebuilt_keras_matches_the_shipped_tflite(name: str, tf_child: TfChild) -> None:
    """trainers.quantize quantizes the shipped weights, not a new training run: the Keras model rebuilt
    from each shipped float .tflite computes the same probabilities (and its int8 sibling agrees)."""
    from kws_rpc.model.kws_model import KwsModel, softmax

    path = REPO / "models" / f"{name}.tflite"
    model = KwsModel(path)
    x = np.random.default_rng(0).normal(size=(16, *model.feature_config.shape)).astype(np.float32) * 3 - 5
    np.testing.assert_allclose(softmax(tf_child.run(rebuilt_logits, str(path), x)), model.predict(x), atol=1e-4)
    sibling = REPO / "models" / f"{name}_int8.tflite"
    if sibling.is_file():
        card = KwsModel(sibling).card
        assert card.quantization == "int8" and card.training["float_sha256"] == model.card.sha256
        assert abs(card.metrics["test_accuracy"] - card.metrics["float_test_accuracy"]) <= 0.0025


def test_an_int8_graph_is_rebuilt_with_dequantized_weights(tf_child: TfChild) -> None:
    """little_stream starts from little_listen's int8 .tflite: the float model rebuilt from it computes what
    the int8 graph does, up to the int8 activations' rounding."""
    from kws_rpc.model.kws_model import KwsModel, softmax

    path = REPO / "models" / "little_listen.tflite"
    model = KwsModel(path)
    x = np.random.default_rng(0).normal(size=(64, *model.feature_config.shape)).astype(np.float32) * 3 - 5
    rebuilt, shipped = softmax(tf_child.run(rebuilt_logits, str(path), x)), model.predict(x)
    assert np.abs(rebuilt - shipped).max() < 0.1 and (rebuilt.argmax(-1) == shipped.argmax(-1)).mean() >= 0.9


def codec_round_trip_of(audio: np.ndarray, which: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Child: trainers.train.codec_round_trip of the clips ``which``, on the big_codec recipe's features."""
    from kws_rpc.audio.features import log_mel
    from trainers.recipes import RECIPES
    from trainers.train import codec_round_trip

    cfg = RECIPES["big_codec"].feature
    return log_mel(audio, cfg), codec_round_trip(log_mel(audio, cfg), cfg, which)


def test_codec_augmentation_is_what_the_server_decodes(tf_child: TfChild) -> None:
    """Training's codec augmentation = the edge's 300 B mfcc-dct request, decoded as the server does."""
    from kws_rpc.audio.features import FeatureConfig
    from kws_rpc.wire.codec import tensor_from_proto
    from kws_rpc.wire.encodings import build_request

    audio = np.random.default_rng(4).normal(scale=0.05, size=(3, 16000)).astype(np.float32)
    exact, all_coded = tf_child.run(codec_round_trip_of, audio, [0, 1, 2])
    _, none_coded = tf_child.run(codec_round_trip_of, audio, [])
    np.testing.assert_array_equal(none_coded, exact)
    cfg = FeatureConfig(num_mfcc=0, upper_hz=7600.0)
    for i in range(3):
        request = build_request(audio[i], "mfcc-dct", f"train-{i}", cfg)
        assert request.ByteSize() <= 300
        np.testing.assert_array_equal(all_coded[i], tensor_from_proto(request.features.tensor))
    assert np.abs(all_coded - exact).mean() > 0.01  # lossy: the augmentation changes the features


def test_quiet_augmentation_makes_16_bit_recordings_at_low_level() -> None:
    """quiet_prob turns that share of clips into 16-bit recordings 25-65 dB down; the others are untouched."""
    from trainers.augment import AugmentConfig, augment_audio

    x = np.random.default_rng(4).uniform(-0.5, 0.5, (400, 16000)).astype(np.float32)
    loud = AugmentConfig(time_shift=0, noise_prob=0.0, gain=(1.0, 1.0))
    quiet = AugmentConfig(time_shift=0, noise_prob=0.0, gain=(1.0, 1.0), quiet_prob=0.25)
    plain = augment_audio(x, [], np.random.default_rng(5), loud)
    out = augment_audio(x, [], np.random.default_rng(5), quiet)
    changed = np.flatnonzero(np.any(out != plain, axis=-1))
    assert 60 <= len(changed) <= 140  # about a quarter of 400
    drop_db = 20 * np.log10(np.abs(plain[changed]).max(-1) / np.abs(out[changed]).max(-1))
    assert drop_db.min() > 24 and drop_db.max() < 66
    np.testing.assert_array_equal(out[changed] * 32768, np.round(out[changed] * 32768))  # on the int16 grid


def test_mixup_mixes_audio_and_targets_alike() -> None:
    """mixup_prob=0 is the identity; otherwise a mixed clip is lam * x_i + (1 - lam) * x_j with the same
    lam (>= 0.5) in its targets. With the targets as the "audio", both outputs must be equal."""
    from trainers.augment import AugmentConfig, mixup

    rng = np.random.default_rng(6)
    y = np.eye(8, dtype=np.float32)[rng.integers(0, 8, 400)]
    same_x, same_y = mixup(y, y, rng, AugmentConfig())
    assert same_x is y and same_y is y
    mx, my = mixup(y, y, np.random.default_rng(7), AugmentConfig(mixup_prob=0.5))
    np.testing.assert_allclose(mx, my, atol=1e-6)
    changed = np.flatnonzero(np.abs(my - y).max(-1) > 1e-6)
    assert 120 <= len(changed) <= 200  # about half of 400, less the partners of the same word
    np.testing.assert_allclose(my.sum(-1), 1.0, atol=1e-6)
    own = my[np.arange(len(y)), y.argmax(-1)]
    assert own.min() >= 0.5 - 1e-6 and own[changed].max() < 1.0


def weight_average_run(decay: float) -> tuple[list[list[np.ndarray]], list[np.ndarray], list[np.ndarray]]:
    """Child: a toy model trained 3 batches with trainers.train.WeightAverage(decay): (its weights after
    each batch, the average, the weights inside and after ``applied()`` as [inside, after] flattened)."""
    import tensorflow as tf

    from trainers.train import WeightAverage

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3), tf.keras.layers.BatchNormalization()])
    model.compile(optimizer=tf.keras.optimizers.SGD(0.5), loss="mse")
    seen: list[list[np.ndarray]] = []
    record = tf.keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(model.get_weights()))
    average = WeightAverage(decay)
    x = np.random.default_rng(1).normal(size=(24, 4)).astype(np.float32)
    model.fit(x, x[:, :3] * 3.0, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[average, record])
    with average.applied():
        inside = model.get_weights()
    return seen, average.average, [np.concatenate([w.ravel() for w in inside]),
                                   np.concatenate([w.ravel() for w in model.get_weights()])]


def test_weight_average_is_the_exponential_average_of_every_batch(tf_child: TfChild) -> None:
    """After batches w1, w2, w3: avg = d^2 w1 + d (1 - d) w2 + (1 - d) w3 for every weight, batch-norm
    statistics included; applied() swaps it in and restores the training weights after."""
    d = 0.7
    seen, average, (inside, after) = tf_child.run(weight_average_run, d)
    assert len(seen) == 3
    for i, a in enumerate(average):
        w1, w2, w3 = (s[i] for s in seen)
        np.testing.assert_allclose(a, d * d * w1 + d * (1 - d) * w2 + (1 - d) * w3, rtol=1e-5, atol=1e-6)
    assert not np.allclose(average[0], seen[-1][0])  # training moved the weights: the average is not the last
    np.testing.assert_allclose(inside, np.concatenate([a.ravel() for a in average]), rtol=1e-6)
    np.testing.assert_allclose(after, np.concatenate([w.ravel() for w in seen[-1]]), rtol=1e-6)


def toy_training_digest(seed: int) -> str:
    """Child: train() in small: seeds set, a toy DS-CNN built, compiled and fitted for one epoch (fresh
    augmentation, mixup, SpecAugment, best-val selection) on 128 synthetic clips; the sha256 of its weights."""
    import hashlib

    import tensorflow as tf

    from kws_rpc.audio.features import log_mel
    from trainers.augment import AugmentConfig
    from trainers.train import _compile, _fit, build_model

    r = toy_recipe("dscnn", "float32", augment=AugmentConfig(mixup_prob=0.5))
    data_rng = np.random.default_rng(123)  # the same clips for every seed
    audio = (0.1 * data_rng.standard_normal((128, 16000))).astype(np.float32)
    labels = data_rng.integers(0, 8, 128)
    clean = log_mel(audio, r.feature)
    data = {"train_audio": audio, "noise": [audio.ravel()], "train_onehot": np.eye(8, dtype=np.float32)[labels],
            "val_feats": clean[:32], "val_labels": labels[:32], "mean": clean.mean(axis=(0, 1)), "teachers": []}
    tf.keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(r, data["mean"], clean.var(axis=(0, 1)))
    _compile(model, r, r.lr, 2)
    _fit(model, r, 1, data, rng, "toy")
    return hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()


def test_training_is_a_function_of_its_seed(tf_child: TfChild) -> None:
    """What lets a card's train_command reproduce its file on one machine: the same seed gives the same
    weights bit for bit, another seed others."""
    first, again, other = (tf_child.run(toy_training_digest, s) for s in (0, 0, 1))
    assert first == again
    assert other != first


def test_reproduce_reads_the_card_command_and_compares_files(tmp_path: Path) -> None:
    """trainers.reproduce: the card's command is redirected, never rewritten; a copy of the shipped card
    is 'identical' (exit 0), one whose file and 40th val epoch differ is not (exit 1, epoch 40 named)."""
    import json

    from trainers import reproduce

    little = json.loads((REPO / "models" / "little.json").read_text())
    assert reproduce.train_argv(little) == ["little"]
    with pytest.raises(ValueError, match="trainers.quantize"):
        reproduce.train_argv(json.loads((REPO / "models" / "big_int8.json").read_text()))
    (tmp_path / "little.json").write_text(json.dumps(little))
    assert reproduce.main(["little", "--out", str(tmp_path), "--compare-only"]) == 0
    other = {**little, "sha256": "0" * 64,
             "training": {**little["training"], "val_history": [*little["training"]["val_history"][:40], 0.5]}}
    (tmp_path / "little.json").write_text(json.dumps(other))
    assert reproduce.main(["little", "--out", str(tmp_path), "--compare-only"]) == 1
    result = json.loads((tmp_path / "little.reproduce.json").read_text())
    assert not result["identical"] and result["first_divergent_epoch"] == 40
    assert reproduce.main(["big_int8", "--out", str(tmp_path), "--compare-only"]) == 2


def test_reproduce_model_diff_compares_answers_and_quantization_scales() -> None:
    """A file against itself: the same answers on every val clip and no tensor with other scales; against
    other models: answers differ, and scales differ (same tensor count) or are not compared (another count)."""
    from trainers import reproduce

    models = REPO / "models"
    same = reproduce.model_diff(models / "little.tflite", models / "little.tflite")
    assert same["clips"] == 800 and same["answers_differ"] == 0 and same["max_probability_diff"] == 0.0
    assert same["tensors_with_other_scales"] == 0 and same["max_relative_scale_diff"] == 0.0
    alike = reproduce.model_diff(models / "little.tflite", models / "big_int8.tflite")  # 52 tensors each
    assert alike["answers_differ"] > 0 and alike["tensors_with_other_scales"] > 0
    other = reproduce.model_diff(models / "little.tflite", models / "member_cnn_int8.tflite")
    assert other["answers_differ"] > 0 and other["tensors"][0] != other["tensors"][1]
    assert other["tensors_with_other_scales"] is None
