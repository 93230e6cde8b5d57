"""`make reproduce MODEL=little`: retrains a shipped model by its card's train_command and checks the result.

The command runs as written on the card (`python -m trainers.train little`, say), with its output sent to
a scratch folder (--out, default results/reproduce/) instead of models/; then the new file is compared
with the shipped one: the same sha256 means the card's command reproduces the model bit for bit. If
not, this says at which epoch the val accuracy first differs, which tells a changed recipe or data (an
early epoch) from floating-point differences that grow over a run (later), and how the two files differ
where it matters: their answers on the val clips, and which tensors' int8 quantization scales differ. When
every epoch agrees, the answers are the same and only scales differ by float rounding (~1e-7), the training
reproduced and the int8 calibration's float statistics rounded differently (another CPU's kernels).

Training is a function of its seed on one machine (tests/test_trainers.py): the same command there gives
the same file, also with another job sharing the cores. Another CPU may not: TensorFlow's oneDNN kernels
and OpenBLAS pick code paths by CPU, and their float sums round differently.

Exit status: 0 identical, 1 different, 2 the card has no trainers.train command (the int8 siblings are
made by trainers.quantize from their float model: reproduce that one).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PREFIX = ["python", "-m", "trainers.train"]


def train_argv(card: dict[str, Any]) -> list[str]:
    """The arguments of a card's `python -m trainers.train ...` command; ValueError for any other command."""
    words = shlex.split(card.get("train_command", ""))
    if words[:3] != PREFIX or "--out" in words:
        raise ValueError(f"{card.get('name')}: train_command {card.get('train_command')!r} is not a "
                         f"'{shlex.join(PREFIX)} ...' command this can redirect")
    return words[3:]


def compare(shipped: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What differs between two cards of one model: the file's sha256, and the first epoch (0-based) whose
    val accuracy differs (None if the histories agree as far as both go)."""
    a, b = shipped["training"].get("val_history", []), new["training"].get("val_history", [])
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if first is None and len(a) != len(b):
        first = min(len(a), len(b))
    return {"model": shipped["name"], "identical": shipped["sha256"] == new["sha256"],
            "sha256": {"shipped": shipped["sha256"], "new": new["sha256"]}, "first_divergent_epoch": first,
            "val_accuracy": {"shipped": shipped["metrics"].get("val_accuracy"), "new": new["metrics"].get("val_accuracy")},
            "epochs": {"shipped": len(a), "new": len(b)}}


def model_diff(shipped: Path, new: Path, data_dir: str | None = None, split: str = "val") -> dict[str, Any]:
    """Two .tflite files of one model compared where it matters: their answers on a split's clips (each
    file with its own card), and the tensors whose quantization scales or zero points differ (static
    metadata, compared when both files have the same tensors)."""
    import numpy as np

    from kws_rpc.lab.data import find_dataset, load_split
    from kws_rpc.model.interpreter import make_interpreter
    from kws_rpc.model.kws_model import KwsModel

    audio, _, _ = load_split(split, find_dataset(data_dir))
    probs = [KwsModel(path).predict_audio(audio) for path in (shipped, new)]
    details = [make_interpreter(path.read_bytes()).get_tensor_details() for path in (shipped, new)]
    out: dict[str, Any] = {"split": split, "clips": len(audio),
                           "answers_differ": int((probs[0].argmax(-1) != probs[1].argmax(-1)).sum()),
                           "max_probability_diff": float(np.abs(probs[0] - probs[1]).max()),
                           "tensors": [len(d) for d in details], "tensors_with_other_scales": None,
                           "max_relative_scale_diff": None}
    if len(details[0]) == len(details[1]):
        rel = []
        for x, y in zip(*details):
            qa, qb = x["quantization_parameters"], y["quantization_parameters"]
            same_shape = qa["scales"].shape == qb["scales"].shape
            if not same_shape or not np.array_equal(qa["zero_points"], qb["zero_points"]):
                rel.append(float("inf"))
            elif not np.array_equal(qa["scales"], qb["scales"]):
                rel.append(float((np.abs(qa["scales"] - qb["scales"]) / np.abs(qa["scales"])).max()))
        out["tensors_with_other_scales"] = len(rel)
        out["max_relative_scale_diff"] = max(rel, default=0.0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a shipped model's name (models/NAME.json)")
    ap.add_argument("--out", default=str(ROOT / "results" / "reproduce"), help="scratch folder for the retrained file")
    ap.add_argument("--models", default=str(ROOT / "models"), help="where the shipped model and its teachers are")
    ap.add_argument("--compare-only", action="store_true", help="do not train: compare what --out already holds")
    ap.add_argument("--data-dir", help="folder holding mini_speech_commands/ (default: $KWS_DATA_DIR, ./data, ...)")
    a = ap.parse_args(argv)
    shipped = json.loads((Path(a.models) / f"{a.model}.json").read_text())
    try:
        args = train_argv(shipped)
    except ValueError as e:
        print(f"reproduce: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    if not a.compare_only:
        from trainers import train  # TensorFlow loads only to train

        train.main([*args, "--out", str(out), "--teachers", a.models])
    new_card = out / f"{shipped['name']}.json"
    if not new_card.is_file():
        print(f"reproduce: {new_card} is missing: train first (without --compare-only)", file=sys.stderr)
        return 1
    result = compare(shipped, json.loads(new_card.read_text()))
    new_file = out / f"{shipped['name']}.tflite"
    if not result["identical"] and new_file.is_file():
        result["model_diff"] = model_diff(Path(a.models) / f"{shipped['name']}.tflite", new_file, a.data_dir)
    (out / f"{shipped['name']}.reproduce.json").write_text(json.dumps(result, indent=1) + "\n")
    if result["identical"]:
        print(f"{shipped['name']}: identical to the shipped file (sha256 {shipped['sha256'][:16]}...)")
        return 0
    first = result["first_divergent_epoch"]
    print(f"{shipped['name']}: differs from the shipped file: val {result['val_accuracy']['new']} against "
          f"{result['val_accuracy']['shipped']}; "
          + (f"every epoch's val accuracy agrees ({result['epochs']['shipped']} epochs)" if first is None else
             f"val accuracy first differs at epoch {first} of {result['epochs']['shipped']}"))
    d = result.get("model_diff")
    if d:
        scales = ("" if d["tensors_with_other_scales"] is None else
                  f"; {d['tensors_with_other_scales']} of {d['tensors'][0]} tensors have other quantization "
                  f"scales (at most {d['max_relative_scale_diff']:.1e} apart, relative)")
        print(f"  answers differ on {d['answers_differ']} of {d['clips']} {d['split']} clips (largest "
              f"probability difference {d['max_probability_diff']:.1e}){scales}")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
