"""Model cards guard against feeding a model features it was not trained on."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kws_rpc.errors import ModelIntegrityError, ModelMismatch
from kws_rpc.model.kws_model import KwsModel, softmax_margin


def test_tampered_model_is_refused(tmp_path: Path, little_path: Path) -> None:
    shutil.copy(little_path.with_suffix(".json"), tmp_path / "m.json")
    content = bytearray(little_path.read_bytes())
    content[-1] ^= 0xFF
    (tmp_path / "m.tflite").write_bytes(bytes(content))
    with pytest.raises(ModelIntegrityError, match="does not match its card"):
        KwsModel(tmp_path / "m.tflite")


def test_model_without_card_is_refused(tmp_path: Path, little_path: Path) -> None:
    shutil.copy(little_path, tmp_path / "m.tflite")
    with pytest.raises(ModelIntegrityError, match="no model card"):
        KwsModel(tmp_path / "m.tflite")


def test_incomplete_card_is_refused(tmp_path: Path, little_path: Path) -> None:
    shutil.copy(little_path, tmp_path / "m.tflite")
    card = json.loads(little_path.with_suffix(".json").read_text())
    del card["feature"]
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError, match="incomplete"):
        KwsModel(tmp_path / "m.tflite")


def test_card_must_say_what_the_model_outputs(tmp_path: Path, little_path: Path) -> None:
    shutil.copy(little_path, tmp_path / "m.tflite")
    card = json.loads(little_path.with_suffix(".json").read_text())
    card["output"] = "scores"
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError, match="'probabilities' or 'logits'"):
        KwsModel(tmp_path / "m.tflite")


def test_outputs_are_probabilities_whatever_the_model_emits(little_path: Path, test_audio) -> None:
    m = KwsModel(little_path)
    probs = m.predict(m.features(test_audio[0][:16]))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=2e-2)  # an int8 softmax is off by its rounding
    assert np.all(probs >= 0)


def test_features_must_fit_the_card(little_path: Path) -> None:
    m = KwsModel(little_path)
    frames, coeffs = m.feature_config.shape
    with pytest.raises(ModelMismatch, match="do not fit"):
        m.predict(np.zeros((frames, coeffs + 1), np.float32))
    bad = np.zeros(m.feature_config.shape, np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(Exception, match="NaN"):
        m.predict(bad)


def test_batched_equals_one_by_one(little_path: Path, test_audio) -> None:
    m = KwsModel(little_path)
    feats = m.features(test_audio[0][:37])
    batched = m.predict(feats)
    single = np.stack([m.predict(f)[0] for f in feats])
    np.testing.assert_allclose(batched, single, atol=1e-6)
    assert batched.shape == (37, 8)
    np.testing.assert_allclose(batched.sum(-1), 1.0, atol=0.02)
    assert np.all(softmax_margin(batched) >= 0)
