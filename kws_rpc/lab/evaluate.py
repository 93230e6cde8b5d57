"""`make eval`: evaluates every shipped model on the fixed test split, from a real run.

Prints a table (accuracy, size, zlib size, per-clip latency of features + inference at batch 1), the
offline majority vote of the ensemble named in models/ensemble.json, and every model's keyword accuracy
with the split's portion of the background noise mixed in at 20, 10, 5 and 0 dB SNR, with, for the
10-label listening models, the share of silence and unknown clips they reject (kws_rpc.lab.noisy_eval);
writes the same as JSON ("noise" and "rejection" keys), to
results/eval.json unless --out says otherwise (``make eval-commit`` refreshes the committed
bench/results/eval.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kws_rpc.lab.data import find_dataset, load_split
from kws_rpc.lab.ensemble_fit import stack_models
from kws_rpc.model.ensemble import decide_all
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.model.native import tune_process
from kws_rpc.lab import noisy_eval

log = logging.getLogger("kws.eval")


def shipped_models(models_dir: Path) -> list[Path]:
    return sorted(p for p in models_dir.glob("*.tflite") if p.with_suffix(".json").is_file())


def evaluate_model(model: KwsModel, audio: np.ndarray, labels: np.ndarray, latency_clips: int) -> dict:
    """Accuracy from one batched pass; latency from clip-by-clip runs (features + inference)."""
    probs = model.predict(model.features(audio))
    acc = float((probs.argmax(-1) == labels).mean())
    times = []
    for clip in audio[:latency_clips]:
        t0 = time.perf_counter()
        model.predict(model.features(clip))
        times.append((time.perf_counter() - t0) * 1e3)
    t_feat = []
    for clip in audio[: min(latency_clips, 200)]:
        t0 = time.perf_counter()
        model.features(clip)
        t_feat.append((time.perf_counter() - t0) * 1e3)
    c = model.card
    return {
        "model": c.name, "architecture": c.architecture, "quantization": c.quantization,
        "parameters": c.num_parameters, "input": list(c.feature.shape), "accuracy": acc,
        "correct": int((probs.argmax(-1) == labels).sum()), "clips": len(labels),
        "card_test_accuracy": c.metrics.get("test_accuracy"), "val_accuracy": c.metrics.get("val_accuracy"),
        "size_bytes": c.size_bytes, "zlib_bytes": c.zlib_bytes,
        "latency_ms_p50": float(np.median(times)), "latency_ms_mean": float(np.mean(times)),
        "features_ms_mean": float(np.mean(t_feat)), "probabilities": probs,
    }


def render_table(rows: list[dict]) -> str:
    head = f"{'model':<14} {'arch':<7} {'quant':<8} {'params':>8} {'input':>7} {'test acc':>9} " \
           f"{'size B':>8} {'zlib B':>8} {'ms/clip':>8} {'feat ms':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<14} {r['architecture']:<7} {r['quantization']:<8} {r['parameters']:>8} "
            f"{'x'.join(map(str, r['input'])):>7} {100 * r['accuracy']:>8.3f}% {r['size_bytes']:>8} "
            f"{r['zlib_bytes']:>8} {r['latency_ms_mean']:>8.3f} {r['features_ms_mean']:>8.3f}"
        )
    return "\n".join(lines)


def run(models_dir: Path, root: Path, split: str, latency_clips: int, noise: bool = True) -> dict:
    audio, labels, _ = load_split(split, root, progress=True)
    rows = []
    models = [KwsModel(p) for p in shipped_models(models_dir)]
    for model in tqdm(models, desc=f"evaluating on {split}", unit="model"):
        rows.append(evaluate_model(model, audio, labels, latency_clips))
    result: dict = {"split": split, "clips": len(labels), "models": rows}
    if noise:
        result.update(evaluate_noise(models, root, split, audio, labels))
    manifest = models_dir / "ensemble.json"
    if manifest.is_file():
        members = json.loads(manifest.read_text())["members"]
        by_name = {r["model"]: r for r in rows}
        missing = [m for m in members if m not in by_name]
        if not missing:
            clips = stack_models([by_name[m]["probabilities"] for m in members])
            votes = decide_all("majority", clips)
            result["ensemble"] = {"members": members, "policy": "majority (ties: summed probability)",
                                  "accuracy": float((votes == labels).mean())}
    return result


def evaluate_noise(models: list[KwsModel], root: Path, split: str, audio, labels) -> dict:
    """'noise': per model and SNR the keyword accuracy, the SNR per clip; 'noise_fixed_level': the same at
    a fixed noise level; 'rejection': per listening model the silence and unknown rejection rates (see
    kws_rpc.lab.noisy_eval)."""
    sets = noisy_eval.noisy_sets(root, split, audio)
    fixed = noisy_eval.noisy_sets(root, split, audio, snrs=noisy_eval.FIXED_SNRS, level="fixed")
    listening = [m for m in models if noisy_eval.is_listening(m)]
    rej_sets = noisy_eval.rejection_sets(root, split, audio, labels) if listening else {}
    noise, noise_fixed, rejection = {}, {}, {}
    for m in tqdm(models, desc=f"noise and rejection on {split}", unit="model"):
        noise[m.name] = noisy_eval.noise_accuracy(m, sets, labels)
        noise_fixed[m.name] = noisy_eval.noise_accuracy(m, fixed, labels)
        if m in listening:
            rejection[m.name] = noisy_eval.rejection(m, rej_sets)
    return {"noise": noise, "noise_fixed_level": noise_fixed, "rejection": rejection, "noise_seed": noisy_eval.SEED}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models", help="folder of shipped .tflite files with cards")
    ap.add_argument("--data-dir", help="folder holding mini_speech_commands/ (default: $KWS_DATA_DIR, ./data, ...)")
    ap.add_argument("--download", action="store_true", help="download the official zip if no copy is found")
    ap.add_argument("--split", default="test", choices=["test", "val"], help="split to report (default: test)")
    ap.add_argument("--latency-clips", type=int, default=200, help="clips timed one by one per model")
    ap.add_argument("--out", default="results/eval.json", help="where the JSON goes (default: %(default)s)")
    ap.add_argument("--no-noise", dest="noise", action="store_false",
                    help="skip the noisy-clip accuracy and the silence/unknown rejection")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    tune_process()  # the latencies are those of the edge and the server, which run tuned
    root = find_dataset(args.data_dir, allow_download=args.download)
    result = run(Path(args.models), root, args.split, args.latency_clips, args.noise)
    print()
    print(render_table(result["models"]))
    if "ensemble" in result:
        e = result["ensemble"]
        print(f"\nensemble {'+'.join(e['members'])}, {e['policy']}: {100 * e['accuracy']:.3f}%")
    if result.get("noise"):
        print()
        print(noisy_eval.render(result["noise"], result["rejection"]))
        print()
        print(noisy_eval.render(result["noise_fixed_level"], {}, "fixed"))
        for per_snr in (*result["noise"].values(), *result["noise_fixed_level"].values()):
            for v in per_snr.values():
                v.pop("correct")
    for r in result["models"]:
        r.pop("probabilities")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
