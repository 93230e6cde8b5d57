"""`kws-edge classify FILE.wav ...`: the word in each of the user's WAV files, by the little on the Pi.

Any mono 16-bit PCM WAV at 8-48 kHz (resampled to the model's 16 kHz) of up to ``--max-seconds``. A clip of
at most 1 s is zero-padded to 1 s and classified whole, as the models were trained; a longer one is
scanned with a 1 s window every 100 ms, and its answer is the window whose top keyword is most probable
(a model with `_silence_` / `_unknown_` outputs answers those when no window holds a keyword). One line per
file: its path, label and probability; JSON lines with ``--json``. Exit 0 when every file was classified,
1 when any could not be read (each says why on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np

from edge.sources import SourceError, SourceStats, wav_file
from edge.stream import is_keyword
from kws_rpc.audio.wav import pad_or_trim
from kws_rpc.model.kws_model import KwsModel

log = logging.getLogger("kws.edge.classify")
HOP_S = 0.1


@dataclasses.dataclass(frozen=True)
class Verdict:
    path: str
    label: str
    score: float
    seconds: float
    window_end_s: float  # where in the file the deciding second ends

    def line(self) -> str:
        return f"{self.path}\t{self.label}\t{self.score:.3f}"


def classify_audio(model: KwsModel, audio: np.ndarray) -> tuple[str, float, float]:
    """(label, probability, end of the deciding window in s) for audio at the model's rate."""
    f = model.feature_config
    rate, clip = f.sample_rate, f.clip_samples
    if len(audio) <= clip:
        probs = model.predict_audio(pad_or_trim(audio, clip))[0]
        top = int(np.argmax(probs))
        return model.labels[top], float(probs[top]), len(audio) / rate
    hop = int(HOP_S * rate)
    ends = list(range(clip, len(audio) + 1, hop))
    if ends[-1] != len(audio):
        ends.append(len(audio))
    probs = np.concatenate([model.predict_audio(np.stack([audio[e - clip : e] for e in ends[i : i + 64]]))
                            for i in range(0, len(ends), 64)])
    keyword = np.array([is_keyword(lb) for lb in model.labels])
    best = int(np.argmax(probs[:, keyword].max(axis=1)))  # the window most likely to hold a keyword
    top = int(np.argmax(probs[best]))
    return model.labels[top], float(probs[best, top]), ends[best] / rate


def classify_file(model: KwsModel, path: str, max_seconds: float) -> Verdict:
    rate = model.feature_config.sample_rate
    audio = np.concatenate([np.zeros(0, np.float32),
                            *wav_file(path, rate, SourceStats(), block_s=1.0, max_seconds=max_seconds)])
    if not len(audio):
        raise SourceError(f"{path}: the file holds no audio")
    label, score, end = classify_audio(model, audio)
    return Verdict(path, label, score, len(audio) / rate, end)


def main(argv: list[str] | None = None, prog: str = "kws-edge classify") -> int:
    from kws_rpc.model.shipped import models_dir

    ap = argparse.ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", metavar="FILE.wav", help="mono 16-bit PCM WAV files, 8-48 kHz")
    ap.add_argument("--json", action="store_true", help="one JSON object per file instead of tab-separated lines")
    ap.add_argument("--model", type=Path, default=None,
                    help="a .tflite with its card (default: the shipped little in --models)")
    ap.add_argument("--models", type=Path, default=None,
                    help="folder of the shipped models (default $KWS_MODELS_DIR, else the installed ones)")
    ap.add_argument("--max-seconds", type=float, default=600.0, help="longest file taken (default %(default)s s)")
    ap.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        model = KwsModel(a.model or (a.models or models_dir()) / "little.tflite")
    except (OSError, ValueError) as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    failed = 0
    for path in a.files:
        try:
            v = classify_file(model, path, a.max_seconds)
        except SourceError as e:
            failed += 1
            print(f"{ap.prog}: {e}", file=sys.stderr)
            continue
        print(json.dumps({**dataclasses.asdict(v), "model": model.name}) if a.json else v.line(), flush=True)
    if failed:
        print(f"{ap.prog}: {failed} of {len(a.files)} files could not be classified", file=sys.stderr)
    return 1 if failed else 0

