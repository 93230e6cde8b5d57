"""How the shipped models hold up in room noise, and whether listening models say "not a keyword".

For `make eval` (kws_rpc.evaluate) and the paired comparisons of docs/listen_models.md:

- ``noisy_sets``: the split's keyword clips mixed with the split's portion of the background recordings
  (kws_rpc.lab.noise) at each SNR, one fixed seed, so every model hears the very same noisy clips. The SNR
  is per clip (``level="clip"``: against each clip's own loudest 300 ms) or a fixed noise level
  (``level="fixed"``: against the split's median clip, as the streams of `make bench-stream` are mixed),
  where a softly spoken word meets the same noise as a loud one;
- ``rejection_sets``: the split's silence clips and unknown clips (synthetic words of the split's word
  list, reversed and spliced keyword clips of the split; kws_rpc.lab.listen_data), fixed seed;
- a keyword clip counts as right only if its keyword is the top answer (``_silence_`` or ``_unknown_``
  is wrong); a silence or unknown clip counts as rejected if the top answer is either of the two.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kws_rpc.lab.data import LABELS, load_noise
from kws_rpc.lab.listen_data import load_synth, silence_clips, unknown_set
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.lab.noise import median_reference, mix_batch, portions

SNRS: tuple[float, ...] = (np.inf, 20.0, 10.0, 5.0, 0.0)
FIXED_SNRS: tuple[float, ...] = (20.0, 10.0, 0.0)  # the streams' levels; clean is in the per-clip table
SEED = 2026
NONWORDS = 200  # reversed and as many spliced clips
SILENCE_CLIPS = 400
LEVELS = ("clip", "fixed")
LEVEL_TEXT = {"clip": "SNR against each clip's loudest 300 ms",
              "fixed": "fixed noise level: SNR against the split's median clip's loudest 300 ms"}


def snr_key(snr: float) -> str:
    return "clean" if not np.isfinite(snr) else f"{snr:g}dB"


def noisy_sets(root: Path, split: str, audio: np.ndarray, snrs: tuple[float, ...] = SNRS,
               seed: int = SEED, level: str = "clip") -> dict[str, np.ndarray]:
    """The split's clips at each SNR ('clean', '20dB', ...), mixed with the split's noise portion, the SNR
    per clip or at a fixed level (see the module docstring)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    noise = portions(load_noise(root), split)
    reference = median_reference(audio) if level == "fixed" else None
    out = {}
    for i, snr in enumerate(snrs):
        if not np.isfinite(snr):
            out[snr_key(snr)] = audio
        elif noise:
            out[snr_key(snr)] = mix_batch(audio, noise, snr, np.random.default_rng([seed, i]), reference)
    return out


def rejection_sets(root: Path, split: str, audio: np.ndarray, labels: np.ndarray,
                   seed: int = SEED) -> dict[str, tuple[np.ndarray, list[str]]]:
    """'unknown' (audio, kind of each clip) and 'silence' (audio, kinds) of the split."""
    rng = np.random.default_rng([seed, 99])
    unknown, kinds = unknown_set(root, split, audio, labels, NONWORDS, rng)
    silence = silence_clips(load_noise(root), split, SILENCE_CLIPS, rng)
    return {"unknown": (unknown, kinds), "silence": (silence, ["silence"] * len(silence))}


def is_listening(model: KwsModel) -> bool:
    return len(model.labels) > len(LABELS)


def answers(model: KwsModel, audio: np.ndarray, reject_offset: float = 0.0) -> np.ndarray:
    """Top answers; a listening model's two reject outputs may be handicapped by ``reject_offset``
    (subtracted from their log-probabilities: a decision threshold, the model is unchanged)."""
    logp = np.log(np.maximum(model.predict(model.features(audio)), 1e-30))
    logp[:, len(LABELS):] -= reject_offset
    return logp.argmax(-1)


def noise_accuracy(model: KwsModel, sets: dict[str, np.ndarray], labels: np.ndarray,
                   reject_offset: float = 0.0) -> dict[str, dict]:
    """Per SNR: accuracy and the per-clip correctness (for paired tests)."""
    out = {}
    for key, audio in sets.items():
        right = answers(model, audio, reject_offset) == labels
        out[key] = {"accuracy": float(right.mean()), "correct": right}
    return out


def rejection(model: KwsModel, sets: dict[str, tuple[np.ndarray, list[str]]],
              reject_offset: float = 0.0) -> dict[str, dict]:
    """Share of silence and unknown clips answered _silence_ or _unknown_, overall and by kind."""
    out = {}
    for name, (audio, kinds) in sets.items():
        rejected = answers(model, audio, reject_offset) >= len(LABELS)
        k = np.asarray(kinds)
        out[name] = {"rate": float(rejected.mean()), "clips": int(len(k)),
                     "by_kind": {kind: float(rejected[k == kind].mean()) for kind in dict.fromkeys(kinds)}}
    return out


def render(rows: dict[str, dict[str, dict]], rejections: dict[str, dict], level: str = "clip") -> str:
    keys = list(next(iter(rows.values())).keys()) if rows else []
    head = f"{'model':<16}" + "".join(f"{k:>9}" for k in keys) + f"{'silence':>9}{'unknown':>9}"
    lines = [f"keyword accuracy in noise ({LEVEL_TEXT[level]}); rejection of silence/unknown",
             head, "-" * len(head)]
    for name, r in rows.items():
        rej = rejections.get(name)
        tail = f"{100 * rej['silence']['rate']:>8.2f}%{100 * rej['unknown']['rate']:>8.2f}%" if rej else \
            f"{'-':>9}{'-':>9}"
        lines.append(f"{name:<16}" + "".join(f"{100 * r[k]['accuracy']:>8.2f}%" for k in keys) + tail)
    return "\n".join(lines)


def compare(models_dir: Path, root: Path, pairs: list[tuple[str, str]], splits: tuple[str, ...] = ("val", "test"),
            seed: int = SEED, reject_offset: float = 0.0, level: str = "clip") -> dict:
    """Per split: every named model's accuracy at each SNR, its rejection rates if it listens, and the
    exact McNemar test of each pair (new, old) on the same clean and noisy clips."""
    from kws_rpc.lab.data import load_split
    from kws_rpc.lab.stats import mcnemar

    names = list(dict.fromkeys(n for pair in pairs for n in pair))
    models = {n: KwsModel(models_dir / f"{n}.tflite") for n in names}
    out: dict = {"seed": seed, "reject_offset": reject_offset, "level": level, "splits": {}}
    for split in splits:
        audio, labels, _ = load_split(split, root)
        sets = noisy_sets(root, split, audio, seed=seed, level=level)
        acc = {n: noise_accuracy(m, sets, labels, reject_offset) for n, m in models.items()}
        listening = [n for n, m in models.items() if is_listening(m)]
        rej_sets = rejection_sets(root, split, audio, labels, seed) if listening else {}
        rej = {n: rejection(models[n], rej_sets, reject_offset) for n in listening}
        synth, rows = load_synth(root, split, keywords=True)  # is a synthetic voice heard as a keyword?
        synth_y = np.array([LABELS.index(r["word"]) for r in rows], dtype=int)
        synthetic = {n: float((answers(m, synth, reject_offset) == synth_y).mean()) if len(rows) else None
                     for n, m in models.items()}
        tests = {f"{a} vs {b}": {k: mcnemar(acc[a][k]["correct"], acc[b][k]["correct"]).as_dict() for k in sets}
                 for a, b in pairs}
        for per in acc.values():
            for v in per.values():
                v["correct_clips"] = int(v.pop("correct").sum())
        out["splits"][split] = {"clips": int(len(labels)), "accuracy": acc, "rejection": rej, "mcnemar": tests,
                              "synthetic_keywords": {"clips": len(rows), "accuracy": synthetic}}
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m kws_rpc.lab.noisy_eval --pair little_listen:little`: noisy-clip table, rejection rates and
    paired tests on val and test."""
    import argparse
    import json

    from kws_rpc.lab.data import find_dataset

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--models", default="models", help="folder of .tflite files with cards")
    ap.add_argument("--data-dir", help="folder holding mini_speech_commands/ (default: $KWS_DATA_DIR, ./data, ...)")
    ap.add_argument("--pair", action="append", required=True, metavar="NEW:OLD", help="models to compare (repeat)")
    ap.add_argument("--out", default="results/listen_compare.json", help="where the JSON goes (default: %(default)s)")
    ap.add_argument("--split", action="append", choices=["val", "test"], help="default: val and test")
    ap.add_argument("--reject-offset", type=float, default=0.0,
                    help="subtracted from the log-probability of _silence_ and _unknown_ (default 0: argmax)")
    ap.add_argument("--level", choices=LEVELS, default="clip",
                    help="clip: the SNR against each clip's loudest 300 ms (default); fixed: one noise level for "
                         "every clip, against the split's median clip (as make bench-stream mixes its streams)")
    args = ap.parse_args(argv)
    pairs = [tuple(p.split(":")) for p in args.pair]
    res = compare(Path(args.models), find_dataset(args.data_dir), pairs,  # type: ignore[arg-type]
                  tuple(args.split or ("val", "test")), reject_offset=args.reject_offset,
                  level=args.level)
    for split, r in res["splits"].items():
        print(f"\n{split} ({r['clips']} keyword clips, seed {res['seed']})")
        print(render(r["accuracy"], r["rejection"], args.level))
        for name, per in r["mcnemar"].items():
            print(f"McNemar {name}: " + ", ".join(f"{k} b={v['b']} c={v['c']} p={v['p']:.3g}" for k, v in per.items()))
        sk = r["synthetic_keywords"]
        if sk["clips"]:
            print(f"synthetic keyword renditions ({sk['clips']}): "
                  + ", ".join(f"{n} {100 * a:.1f}%" for n, a in sk["accuracy"].items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
