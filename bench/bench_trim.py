"""Could the REST spec body send less of each 16-bit PCM clip? (`python -m bench.bench_trim`)

A trimmed 16-bit PCM WAV is still a body the course's own server reads (TensorFlow's decode_wav reads only
16-bit PCM), unlike the IMA ADPCM one. Each clip is cut after its last 10 ms frame whose energy is within
``keep_db`` of its loudest, plus ``margin`` samples, and optionally before its first such frame too; the
server pads it back to 1 s at the end, as it does every short clip. This reports big's accuracy on the
trimmed clips (with exact McNemar against the whole clips) and the share of samples, hence of the WAV's
bytes, saved, on val and test. Writes results/bench_trim.json.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
from tqdm import tqdm

from bench.common import RESULTS, format_table, write_results
from edge.cascade import BIG, repo_relative
from kws_rpc.audio.wav import pad_or_trim, read_wav
from kws_rpc.lab.data import DATASET_DIR, LABELS, find_dataset, label_of, split_names
from kws_rpc.lab.stats import mcnemar
from kws_rpc.model.kws_model import KwsModel

FRAME = 160  # 10 ms at 16 kHz


def trim(audio: np.ndarray, keep_db: float, margin: int, start_too: bool) -> np.ndarray:
    k = len(audio) // FRAME
    energy = 10 * np.log10(np.maximum((audio[: k * FRAME].reshape(k, FRAME) ** 2).mean(-1), 1e-12))
    loud = np.flatnonzero(energy >= energy.max() - keep_db)
    start = max(0, loud[0] * FRAME - margin) if start_too else 0
    return audio[start : min(len(audio), (loud[-1] + 1) * FRAME + margin)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big", default=str(BIG))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=str(RESULTS / "bench_trim.json"))
    a = ap.parse_args(argv)
    big = KwsModel(a.big)
    root = find_dataset(a.data_dir) / DATASET_DIR
    rows = []
    for split in ("val", "test"):
        names = split_names(split)
        truth = np.array([LABELS[label_of(n)] for n in names])
        clips = [read_wav(str(root / n))[0] for n in tqdm(names, desc=f"read {split}", unit="clip")]

        def right(batch: list[np.ndarray]) -> np.ndarray:
            probs = big.predict_audio(np.stack([pad_or_trim(c, big.feature_config.clip_samples) for c in batch]))
            return np.array(big.labels)[probs.argmax(-1)] == truth

        whole = right(clips)
        for keep_db, margin, start_too in itertools.product((30, 40, 50), (800, 1600, 3200), (False, True)):
            cut = [trim(c, keep_db, margin, start_too) for c in clips]
            ok = right(cut)
            t = mcnemar(ok, whole)
            rows.append({"split": split, "keep_db": keep_db, "margin": margin, "cut start": start_too,
                         "samples saved %": float(100 * (1 - sum(map(len, cut)) / sum(map(len, clips)))),
                         "big %": float(100 * ok.mean()), "whole %": float(100 * whole.mean()),
                         "b": int(t.b), "c": int(t.c), "p": round(float(t.p), 3)})
    print(format_table([{k: f"{v:.3f}" if k.endswith(" %") and k != "samples saved %" else v for k, v in r.items()}
                        for r in rows], list(rows[0])))
    out = write_results(a.out, {"big": repo_relative(a.big), "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
