"""Variants of the DCT_RC codec's quantizer, scored by how many of big's answers they change (train+val).

An experiment on the 300 B ``logmel-dct`` request, not a payload: every variant codes each clip's exact
features with ``kws_rpc.wire.featcodec``'s transform, scan and range coder, capped as the edge caps a request
(300 B in all), and counts the clips on which big_int8's answer on the reconstruction differs from its
answer on the exact features. Train's clips count too: the codec's parameters are chosen on train and
val, and a changed answer is a cost whether or not big was trained on the clip (test is never used).

Variants (the shipped codec is ``round 0.5, offset 0, coarser``):
- ``offset``: the decoder puts a nonzero coefficient at (|q| - offset) steps, towards zero, where a
  peaked (Laplacian) coefficient's mean lies; a change of the format's decoder;
- ``round``: the encoder rounds |c| / step down below ``round`` (a dead zone: more zeros, fewer bytes),
  with a finer step index to spend the bytes saved; an encoder-only change;
- ``cap``: what a clip that does not fit gets: ``coarser`` steps (shipped), the default step with the
  scan ``truncated`` to fit, or whichever of the two is closer to the features (``min-mse``).

Writes results/bench_codec_variants.json (``--out``; the committed copy is bench/results/codec_variants.json)
and prints a table. About 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.common import RESULTS, format_table, write_results
from kws_rpc.lab.data import find_dataset, load_split
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.wire import featcodec as fc
from kws_rpc.wire.encodings import DCT_MAX_REQUEST_BYTES, features_request, request_id

VARIANTS = (  # (step index, round, offset, cap)
    (38, 0.5, 0.0, "coarser"), (38, 0.5, 0.1, "coarser"), (38, 0.5, 0.2, "coarser"), (38, 0.5, 0.3, "coarser"),
    (32, 0.4, 0.0, "coarser"), (32, 0.4, 0.15, "coarser"), (28, 0.4, 0.15, "coarser"), (28, 0.35, 0.2, "coarser"),
    (34, 0.45, 0.1, "coarser"), (38, 0.5, 0.0, "truncated"), (38, 0.5, 0.0, "min-mse"),
)


def quantize(x: np.ndarray, g: int, rounding: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer DCT coefficients of x at step index g, |c| / step rounded down below ``rounding``."""
    steps = fc.layout(*x.shape)[0] * (g / 64.0)
    c = fc.transform(x)
    return (np.sign(c) * np.floor(np.abs(c) / steps + rounding)).astype(np.int64), steps


def reconstruct(q: np.ndarray, steps: np.ndarray, offset: float) -> np.ndarray:
    return fc.inverse(np.sign(q) * np.maximum(np.abs(q) - offset, 0.0) * steps)


def fit_coarser(x: np.ndarray, g: int, rounding: float, cap: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The shipped rule (featcodec.encode): coarser steps until the stream fits."""
    while True:
        q, steps = quantize(x, g, rounding)
        size = len(fc.encode_codes(q, g))
        if size <= cap or g >= 255:
            return q, steps, size
        g = min(255, g + max(1, g // 8))


def fit_truncated(x: np.ndarray, g: int, rounding: float, cap: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The step kept, the scan cut after the longest prefix that fits (the stream codes its length)."""
    q, steps = quantize(x, g, rounding)
    order = fc.layout(*q.shape)[1]
    zeros = np.zeros_like(q)
    lo, hi, best = 0, q.size, (zeros, len(fc.encode_codes(zeros, g)))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        cut = q.ravel().copy()
        cut[order[mid:]] = 0
        size = len(fc.encode_codes(cut.reshape(q.shape), g))
        if size <= cap:
            lo, best = mid, (cut.reshape(q.shape), size)
        else:
            hi = mid - 1
    return best[0], steps, best[1]


def code(x: np.ndarray, g: int, rounding: float, offset: float, cap_rule: str, cap: int) -> tuple[np.ndarray, int]:
    """The reconstruction of x as the server would decode it, and the stream's size (step byte included)."""
    q, steps = quantize(x, g, rounding)
    size = len(fc.encode_codes(q, g))
    if size <= cap:
        return reconstruct(q, steps, offset), size
    qc, sc, size_c = fit_coarser(x, g, rounding, cap)
    coarser = reconstruct(qc, sc, offset)
    if cap_rule == "coarser":
        return coarser, size_c
    qt, st, size_t = fit_truncated(x, g, rounding, cap)
    truncated = reconstruct(qt, st, offset)
    xf = np.maximum(x, fc.FLOOR)
    if cap_rule == "truncated" or ((truncated - xf) ** 2).sum() < ((coarser - xf) ** 2).sum():
        return truncated, size_t
    return coarser, size_c


def run(model_path: Path, root: Path) -> list[dict]:
    model = KwsModel(model_path)
    feats, is_val = [], []
    for split in ("val", "train"):
        audio, _, _ = load_split(split, root, progress=False)
        feats.append(model.features(audio))
        is_val.append(np.full(len(audio), split == "val"))
    x, is_val = np.concatenate(feats), np.concatenate(is_val)
    exact = model.predict(x).argmax(-1)
    probe = features_request(x[0], "logmel-dct", request_id(799), model.feature_config)  # an 800-clip run's longest id
    cap = DCT_MAX_REQUEST_BYTES - (probe.ByteSize() - len(probe.features.tensor.data))  # bytes for the tensor data
    rows = []
    for g, rounding, offset, cap_rule in VARIANTS:
        out, sizes = np.empty_like(x), []
        for i in tqdm(range(len(x)), desc=f"g={g} round {rounding} offset {offset} {cap_rule}", unit="clip", leave=False):
            out[i], size = code(x[i], g, rounding, offset, cap_rule, cap)
            sizes.append(size)
        changed = model.predict(out).argmax(-1) != exact
        rows.append({"step_index": g, "round": rounding, "offset": offset, "cap": cap_rule,
                     "mean_data_B": float(np.mean(sizes)), "changed_val": int(changed[is_val].sum()),
                     "changed_train": int(changed[~is_val].sum()), "changed": int(changed.sum()),
                     "clips": len(x)})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/big_int8.tflite", help="the server's model (default: %(default)s)")
    ap.add_argument("--data-dir", help="folder holding mini_speech_commands/ (default: $KWS_DATA_DIR, ./data, ...)")
    ap.add_argument("--out", default=str(RESULTS / "bench_codec_variants.json"), help="results JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    rows = run(Path(args.model), find_dataset(args.data_dir))
    print(format_table([{**r, "round": f"{r['round']:g}", "offset": f"{r['offset']:g}"} for r in rows],
                       ["step_index", "round", "offset", "cap", "mean_data_B", "changed_val", "changed_train",
                        "changed"]))
    print(f"wrote {write_results(args.out, {'model': Path(args.model).as_posix(), 'rows': rows})}")


if __name__ == "__main__":
    main()
