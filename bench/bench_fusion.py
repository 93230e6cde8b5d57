"""Would the edge do better by fusing its own answer with big's? (`python -m bench.bench_fusion`)

The server's reply carries big's probabilities, so on an asked clip the Pi could decide by
``log p_big + w log p_little`` instead of taking big's label (w = 0 is the shipped cascade). For each way
of asking big, at its threshold calibrated on val (models/cascade.json), this runs the little on every clip
as the Pi does (``edge.cascade.little_on_file``, keeping its probabilities), sends the asked clips' requests as the edge builds them
(``kws_rpc.wire.encodings.request_for``) through the server's own handlers in process, and scores the cascade
at every w on val and test. Writes results/bench_fusion.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.common import RESULTS, format_table, write_results
from edge.cascade import BIG, CASCADE_FILE, LITTLE, load_threshold, repo_relative, should_ask
from kws_rpc.audio.wav import read_wav
from kws_rpc.lab.data import DATASET_DIR, LABELS, find_dataset, label_of, split_names
from kws_rpc.model.core import InferenceCore
from kws_rpc.model.kws_model import KwsModel, softmax_margin
from kws_rpc.wire import handlers
from kws_rpc.wire.encodings import request_for, request_id

ROUTES = ("rest-spec", "rest-adpcm", "grpc-logmel-q5z", "grpc-logmel-dct")
WEIGHTS = (0.0, 0.25, 0.5, 1.0)


def in_label_order(probs: np.ndarray, labels: list[str]) -> np.ndarray:
    return np.asarray(probs)[..., [list(labels).index(name) for name in LABELS]]


def run(little: KwsModel, big: KwsModel, root: Path, split: str, thresholds: dict[str, float]) -> list[dict]:
    core = InferenceCore({big.name: big}, big.name)
    names = split_names(split)
    y = np.array([label_of(n) for n in names])
    p_little = np.zeros((len(names), len(LABELS)))
    p_big = {w: np.full((len(names), len(LABELS)), np.nan) for w in ROUTES}
    margin = np.zeros(len(names))
    for i, name in enumerate(tqdm(names, desc=f"{split}", unit="clip")):
        audio, rate = read_wav(str(root / name))
        probs = little.predict_audio(audio, rate)[0]  # what edge.cascade.little_on_file runs, kept whole
        margin[i], p_little[i] = softmax_margin(probs), in_label_order(probs, little.labels)
        for route in ROUTES:
            if should_ask(margin[i], thresholds[route]):
                request = request_for(route, audio, request_id(i), "bench", big.feature_config)
                if isinstance(request, dict):  # the REST spec body, parsed as the gateway parses it
                    request = handlers.spec_request(json.dumps(request).encode())[0]
                p_big[route][i] = in_label_order(handlers.predict(core, request).prediction.probabilities, big.labels)
    rows = []
    for route in ROUTES:
        asked = should_ask(margin, thresholds[route])
        row = {"split": split, "way": route, "calls": int(asked.sum())}
        for w in WEIGHTS:
            fused = np.log(np.maximum(p_big[route][asked], 1e-9)) + w * np.log(np.maximum(p_little[asked], 1e-9))
            final = p_little.argmax(-1)
            final[asked] = fused.argmax(-1)
            row[f"w={w:g} %"] = float(100 * np.mean(final == y))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--little", default=str(LITTLE))
    ap.add_argument("--big", default=str(BIG))
    ap.add_argument("--cascade", default=str(CASCADE_FILE), help="calibrated thresholds")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=str(RESULTS / "bench_fusion.json"))
    a = ap.parse_args(argv)
    little, big = KwsModel(a.little), KwsModel(a.big)
    thresholds = {w: load_threshold(Path(a.cascade), w)[0] for w in ROUTES}
    root = find_dataset(a.data_dir) / DATASET_DIR
    rows = [r for split in ("val", "test") for r in run(little, big, root, split, thresholds)]
    shown = [{k: f"{v:.3f}" if k.endswith(" %") else v for k, v in r.items()} for r in rows]
    print(format_table(shown, ["split", "way", "calls", *(f"w={w:g} %" for w in WEIGHTS)]))
    out = write_results(a.out, {"little": repo_relative(a.little), "big": repo_relative(a.big),
                                "thresholds": thresholds, "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
