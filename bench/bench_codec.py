"""`make bench-codec`: what each feature payload costs in bytes and in big's accuracy (val and test).

Every clip's features are sent the way the edge sends them (``kws_rpc.wire.encodings.features_request``) and
decoded the way the server decodes them (``kws_rpc.wire.codec.tensor_from_proto``), then fed to the model.
The DCT_RC codec (``logmel-dct``) is also swept over its step index g, uncapped, which draws its
rate-accuracy curve; the shipped ``logmel-dct`` payload is g = 38 with each request capped at 300 B.
Bytes are ``ByteSize()`` of the whole PredictRequest. Writes results/bench_codec.{json,png} (``--out``).

With 800 clips one clip is 0.125 points: each point carries the exact McNemar p against exact features.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.common import RESULTS, format_table, write_results
from kws_rpc.lab.data import find_dataset, load_split
from kws_rpc.lab.stats import mcnemar
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.wire import featcodec
from kws_rpc.wire.codec import tensor_from_proto
from kws_rpc.wire.encodings import features_request, request_id

PAYLOADS = ("logmel-i8z", "logmel-q5z", "logmel-q4z", "logmel-dct")
STEPS = (12, 16, 20, 26, 32, 38, 48, 64)


def _row(name: str, split: str, sizes: list[int], feats: np.ndarray, model: KwsModel, labels: np.ndarray,
         exact_right: np.ndarray) -> dict:
    right = model.predict(feats).argmax(-1) == labels
    test = mcnemar(right, exact_right)
    return {"payload": name, "split": split, "mean_B": float(np.mean(sizes)), "max_B": int(max(sizes)),
            "accuracy": float(right.mean()), "exact": float(exact_right.mean()),
            "lost_points": float(100 * (exact_right.mean() - right.mean())),
            "b": int(test.b), "c": int(test.c), "p": float(test.p)}


def run(model_path: Path, root: Path, splits: list[str]) -> list[dict]:
    model = KwsModel(model_path)
    cfg = model.feature_config
    rows = []
    for split in splits:
        audio, labels, _ = load_split(split, root, progress=False)
        exact = model.features(audio)
        exact_right = model.predict(exact).argmax(-1) == labels
        for payload in PAYLOADS:
            requests = [features_request(x, payload, request_id(i), cfg)  # the ids the edge sends
                        for i, x in enumerate(tqdm(exact, desc=f"{split} {payload}", unit="clip", leave=False))]
            feats = np.stack([tensor_from_proto(r.features.tensor) for r in requests])
            rows.append(_row(payload, split, [r.ByteSize() for r in requests], feats, model, labels, exact_right))
        overhead = features_request(exact[0], "logmel-dct", request_id(100), cfg)
        overhead = overhead.ByteSize() - len(overhead.features.tensor.data)
        for g in tqdm(STEPS, desc=f"{split} DCT_RC steps", unit="g", leave=False):
            data = [featcodec.encode(x, g) for x in exact]
            feats = np.stack([featcodec.decode(d, x.shape) for d, x in zip(data, exact)])
            rows.append(_row(f"dct g={g}", split, [len(d) + overhead for d in data], feats, model, labels, exact_right))
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for split, color in (("val", "tab:blue"), ("test", "tab:red")):
        if not any(r["split"] == split for r in rows):  # --split measured only the other one
            continue
        sweep = [r for r in rows if r["split"] == split and r["payload"].startswith("dct g=")]
        ax.plot([r["mean_B"] for r in sweep], [100 * r["accuracy"] for r in sweep], "o-", color=color,
                label=f"{split}: DCT_RC over its step g (uncapped)")
        for r in rows:
            if r["split"] == split and not r["payload"].startswith("dct g="):
                ax.plot(r["mean_B"], 100 * r["accuracy"], "s", color=color)
                ax.annotate(r["payload"], (r["mean_B"], 100 * r["accuracy"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.axhline(100 * sweep[0]["exact"], color=color, ls=":", lw=1)
    ax.axvline(300, color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("bytes per PredictRequest (mean)")
    ax.set_ylabel("big's accuracy on decoded features, %")
    ax.set_title("Feature payloads: size vs accuracy (dotted: exact features)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/big_int8.tflite", help="the server's model (default: %(default)s)")
    ap.add_argument("--split", nargs="+", default=["val", "test"], choices=["val", "test"])
    ap.add_argument("--data-dir", help="folder holding mini_speech_commands/ (default: $KWS_DATA_DIR, ./data, ...)")
    ap.add_argument("--out", default=str(RESULTS / "bench_codec.json"), help="results JSON (a .png goes beside it)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    rows = run(Path(args.model), find_dataset(args.data_dir), args.split)
    print(format_table([{**r, "accuracy": f"{100 * r['accuracy']:.3f}", "exact": f"{100 * r['exact']:.3f}",
                         "lost_points": f"{r['lost_points']:.3f}", "p": f"{r['p']:.3g}"}
                        for r in rows],
                       ["payload", "split", "mean_B", "max_B", "accuracy", "exact", "lost_points", "b", "c", "p"]))
    out = write_results(args.out, {"model": Path(args.model).as_posix(), "rows": rows})
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
