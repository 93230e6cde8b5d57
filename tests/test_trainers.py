"""Each architecture, on toy parameters, converts to TFLite and agrees with Keras (float within 1e-4,
int8 within quantization error)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from trainers.architectures import REGISTRY, cnn, dscnn, resnet  # noqa: E402
from trainers.export import to_tflite  # noqa: E402
from trainers.recipes import LITTLE_FEATURES, RECIPES, SHARED_FEATURES, Recipe  # noqa: E402
from trainers.train import build_model  # noqa: E402

TOY = {
    "dscnn": dscnn.Params(filters=8, blocks=1),
    "resnet": resnet.Params(stem=4, channels=(4, 8), blocks_per_stage=1),
    "cnn": cnn.Params(channels=(4, 8)),
}


@pytest.mark.parametrize("arch", sorted(REGISTRY))
@pytest.mark.parametrize("quant", ["float32", "int8"])
def test_tflite_matches_keras(arch: str, quant: str, tmp_path) -> None:
    feature = LITTLE_FEATURES if quant == "int8" else SHARED_FEATURES
    r = Recipe(name="toy", architecture=arch, params=TOY[arch], feature=feature, epochs=1, description="toy",
               quantization=quant)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, *feature.shape)).astype(np.float32)
    tf.keras.utils.set_random_seed(0)
    model = build_model(r, x.mean(axis=(0, 1)), x.var(axis=(0, 1)))
    content = to_tflite(model, r, x)
    interp = tf.lite.Interpreter(model_content=content)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    keras_probs = tf.nn.softmax(model(x[:8], training=False)).numpy()
    for i in range(8):
        xi = x[i : i + 1]
        if quant == "int8":
            scale, zero = inp["quantization"]
            xi = np.clip(np.round(xi / scale + zero), -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], xi)
        interp.invoke()
        y = interp.get_tensor(out["index"])
        if quant == "int8":
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        np.testing.assert_allclose(y[0], keras_probs[i], atol=1e-4 if quant == "float32" else 0.06)


def test_recipes_are_consistent() -> None:
    assert RECIPES["little"].quantization == "int8"
    for r in RECIPES.values():
        assert r.architecture in REGISTRY
        assert dataclasses.is_dataclass(r.params)


def test_logits_export_matches_keras_logits() -> None:
    r = Recipe(name="toy", architecture="dscnn", params=TOY["dscnn"], feature=LITTLE_FEATURES, epochs=1,
               description="toy", quantization="int8", output="logits")
    x = np.random.default_rng(1).normal(size=(64, *LITTLE_FEATURES.shape)).astype(np.float32)
    tf.keras.utils.set_random_seed(0)
    model = build_model(r, x.mean(axis=(0, 1)), x.var(axis=(0, 1)))
    interp = tf.lite.Interpreter(model_content=to_tflite(model, r, x))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    (s_in, z_in), (s_out, z_out) = inp["quantization"], out["quantization"]
    interp.set_tensor(inp["index"], np.clip(np.round(x[:1] / s_in + z_in), -128, 127).astype(np.int8))
    interp.invoke()
    logits = (interp.get_tensor(out["index"]).astype(np.float32) - z_out) * s_out
    keras_logits = model(x[:1], training=False).numpy()
    assert np.abs(logits - keras_logits).max() < 0.1 * np.abs(keras_logits).max() + 0.05


def test_teacher_targets_average_and_soften(little_path) -> None:
    from kws_rpc.model import KwsModel
    from trainers.train import teacher_targets

    m = KwsModel(little_path)
    audio = np.random.default_rng(2).normal(scale=0.1, size=(4, 16000)).astype(np.float32)
    plain = teacher_targets([m, m], audio, 1.0)
    np.testing.assert_allclose(plain, m.predict(m.features(audio)), atol=1e-6)
    soft = teacher_targets([m], audio, 3.0)
    np.testing.assert_allclose(soft.sum(-1), 1.0, atol=1e-5)
    assert np.all(soft.max(-1) <= plain.max(-1) + 1e-6)  # a higher temperature flattens
    assert np.array_equal(soft.argmax(-1), plain.argmax(-1))


def test_export_keeps_the_best_conversion_within_budget(dataset_root, tmp_path) -> None:
    from kws_rpc.card import load_card
    from kws_rpc.model import KwsModel
    from trainers.export import export

    r = Recipe(name="toy", architecture="dscnn", params=TOY["dscnn"], feature=LITTLE_FEATURES, epochs=1,
               description="toy", quantization="int8", output="logits", zlib_budget=20_000)
    x = np.random.default_rng(2).normal(size=(64, *LITTLE_FEATURES.shape)).astype(np.float32)
    tf.keras.utils.set_random_seed(0)
    model = build_model(r, x.mean(axis=(0, 1)), x.var(axis=(0, 1)))
    path = export(model, r, x, dataset_root, tmp_path, {"epochs": 0}, "toy")
    card = load_card(path, path.read_bytes())  # the card describes the file on disk
    assert card.training["quantization_granularity"] in ("per-channel", "per-tensor")
    assert card.zlib_bytes <= 20_000 and card.output == "logits"
    assert set(card.metrics) == {"val_accuracy", "test_accuracy", "val_keras_tflite_agreement"}
    assert 0.0 <= card.metrics["val_accuracy"] <= 1.0 and card.metrics["val_keras_tflite_agreement"] > 0.5
    assert KwsModel(path).labels == card.labels
    with pytest.raises(RuntimeError, match="no conversion fits"):
        export(model, dataclasses.replace(r, zlib_budget=100), x, dataset_root, tmp_path, {}, "toy")
