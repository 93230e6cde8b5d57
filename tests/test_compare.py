"""kws_rpc.lab.compare: the overlap table on hand-made answers, and one real run (two shipped models, val)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kws_rpc.lab import compare, stats

REPO = Path(__file__).resolve().parent.parent


def test_overlap_counts_shared_errors_and_rescues() -> None:
    a = np.array([1, 1, 0, 0, 0, 1], bool)  # wrong on clips 2, 3, 4
    b = np.array([0, 1, 1, 1, 0, 1], bool)  # wrong on clips 0, 4
    ov = stats.overlap({"a": a, "b": b})
    assert ov["a"]["b"] == {"both_wrong": 1, "a_errors": 3, "b_right_on_a_errors": 2, "share_b_right": 2 / 3}
    assert ov["b"]["a"]["share_b_right"] == 0.5 and ov["b"]["a"]["both_wrong"] == 1
    assert ov["a"]["a"]["both_wrong"] == 3 and ov["a"]["a"]["share_b_right"] == 0


def test_member_sets_and_names(tmp_path: Path) -> None:
    manifest = tmp_path / "ensemble.json"
    manifest.write_text(json.dumps({"members": ["x", "y"]}))
    assert compare.member_sets([], ["x", "y", "z"], manifest) == [["x", "y"], ["x", "y", "z"]]
    assert compare.member_sets([], ["x", "z"], manifest) == [["x", "z"]]
    assert compare.member_sets(["models/z.tflite,x"], ["x", "y", "z"], manifest) == [["z", "x"]]
    with pytest.raises(SystemExit):
        compare.resolve(["x"], "nope")


def test_compare_cli_on_two_shipped_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big, little = str(REPO / "models" / "big_int8.tflite"), str(REPO / "models" / "little.tflite")
    out, manifest = tmp_path / "compare.json", tmp_path / "ensemble.json"
    manifest.write_text(json.dumps({"members": ["big_int8", "little"]}))
    args = [big, little, "--against", big, "--split", "val", "--out", str(out), "--cache-dir",
            str(tmp_path / "cache"), "--manifest", str(manifest), "--write-manifest", str(manifest),
            "--bootstrap", "500"]
    compare.main(args)
    text = capsys.readouterr().out
    rep = json.loads(out.read_text())
    val = rep["splits"]["val"]
    rows = {r["model"]: r for r in val["models"]}
    assert rows["big_int8"]["accuracy"] > rows["little"]["accuracy"] > 0.9
    t = rows["little"]["vs"]["big_int8"]
    assert t["b"] - t["c"] == rows["big_int8"]["errors"] - rows["little"]["errors"]  # discordant pairs
    assert 0 <= t["p"] <= 1 and t["ci95"][0] <= t["diff"] <= t["ci95"][1]
    assert val["overlap"]["big_int8"]["little"]["both_wrong"] <= rows["big_int8"]["errors"]
    oof = val["oof"]["big_int8+little"]["oof_accuracy"]
    assert set(oof) == {"majority", "mean", "log_mean", "margin_weighted", "weighted"}
    fitted = json.loads(manifest.read_text())["weighted"]
    assert fitted["fitted"]["split"] == "val" and set(fitted["weights"]) == {"big_int8", "little"}
    assert "McNemar" in text and "share of the ROW model's errors" in text and "errors by the clip's peak level" in text
    assert sum(r["clips"] for r in val["by_level"]) == 800
    assert sum(r["errors"]["little"] for r in val["by_level"]) == rows["little"]["errors"]
    assert json.loads(manifest.read_text())["weighted_val"] == fitted
    # the second run reads the cached probabilities; out-of-fold weights (make stack) in the manifest
    # are not overwritten by val-fitted ones, which go to weighted_val only
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    oof = {"weights": {"big_int8": 0.6, "little": 0.4}, "space": "log",
           "fitted": {"split": "train+val out of fold (3-fold)", "clips": 7200, "oof_choice": "weighted"}}
    manifest.write_text(json.dumps({"members": ["big_int8", "little"], "weighted": oof}))
    compare.main(args)
    assert json.loads(out.read_text())["splits"]["val"]["models"] == val["models"]
    body = json.loads(manifest.read_text())
    assert body["weighted"] == oof and body["weighted_val"]["weights"] == fitted["weights"]
    assert "stays the out-of-fold one" in capsys.readouterr().out


def test_model_names_tell_apart_files_with_one_card_name_and_stem() -> None:
    a, b, c = Path("models/little.tflite"), Path("cand/little.tflite"), Path("cand/little_s2.tflite")
    assert compare.model_names([a, c], ["little", "little_s2"]) == ["little", "little_s2"]
    assert compare.model_names([a, c], ["little", "little"]) == ["little", "little_s2"]
    assert compare.model_names([a, b], ["little", "little"]) == ["models/little.tflite", "cand/little.tflite"]
    with pytest.raises(ValueError, match="given twice: models/little.tflite"):
        compare.model_names([a, a], ["little", "little"])


def test_by_level_counts_each_models_errors_in_bands_of_peak_level() -> None:
    peaks = np.array([-70.0, -45.0, -35.0, -25.0, -5.0, -180.0])
    correct = {"a": np.array([0, 1, 0, 1, 1, 0], bool), "b": np.array([1, 1, 1, 1, 0, 1], bool)}
    rows = compare.by_level(peaks, correct)
    assert [r["band_dbfs"] for r in rows] == ["< -40", "-40 to -30", "-30 to -20", ">= -20"]
    assert [r["clips"] for r in rows] == [3, 1, 1, 1]
    assert [r["errors"]["a"] for r in rows] == [2, 1, 0, 0] and [r["errors"]["b"] for r in rows] == [0, 0, 0, 1]
