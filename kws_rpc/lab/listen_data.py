"""The two classes a listening model needs beyond the 8 keywords: ``_silence_`` and ``_unknown_``.

A model that hears a live stream is shown, most of the time, no keyword at all: room noise, silence,
other words. It must be able to say so. These builders make that data from the split it belongs to, so
a model chosen on val and scored on test never heard its noise or its words. Numpy only: training
(trainers.listen) and evaluation (kws_rpc.evaluate) build them the same way.

- silence: stretches of the split's portion of the background recordings (kws_rpc.lab.noise.PORTIONS),
  synthetic noise (white, pink, brown, mains hum), and near-digital silence, at random levels;
- unknown: time-reversed keyword clips, and spliced halves of two different keywords (the first half of
  one word up to its energy centre, the rest of another from its centre on; pairs sharing a vowel, such
  as go/no, are skipped, because their splice is a keyword again), built from the split's own clips;
  and synthetic English words of the split (trainers.synth writes them, ``load_synth`` reads them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kws_rpc.audio.wav import read_wav
from kws_rpc.lab.data import LABELS
from kws_rpc.lab.noise import NOISE_KINDS, coloured, portions, segment

SILENCE, UNKNOWN = "_silence_", "_unknown_"
LISTEN_LABELS: tuple[str, ...] = (*LABELS, SILENCE, UNKNOWN)
SILENCE_INDEX, UNKNOWN_INDEX = LISTEN_LABELS.index(SILENCE), LISTEN_LABELS.index(UNKNOWN)
CLIP = 16000
SYNTH_DIR = "synth"
SYNTH_MANIFEST = "manifest.json"
# Keyword pairs whose splice could be heard as a keyword: same vowel (go/no: "g-o" + "o" is "go").
SAME_VOWEL = {frozenset(("go", "no")), frozenset(("left", "yes"))}


def energy_centre(clip: np.ndarray, frame: int = 160) -> int:
    """Sample index of the clip's energy centroid (frames of 10 ms)."""
    n = len(clip) // frame
    e = np.square(clip[: n * frame].astype(np.float64)).reshape(n, frame).sum(-1)
    if e.sum() <= 0:
        return len(clip) // 2
    return int((np.arange(n) * e).sum() / e.sum() * frame + frame // 2)


def place(x: np.ndarray, start: int, length: int = CLIP) -> np.ndarray:
    """x put at ``start`` (may be negative) into ``length`` zeros, cut where it overflows."""
    out = np.zeros(length, np.float32)
    lo, hi = max(start, 0), min(start + len(x), length)
    if hi > lo:
        out[lo:hi] = x[lo - start : hi - start]
    return out


def reversed_clips(audio: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n keyword clips played backwards."""
    idx = rng.integers(0, len(audio), size=n)
    return np.ascontiguousarray(audio[idx, ::-1]).astype(np.float32)


def spliced_clips(audio: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n splices: one keyword up to its energy centre, then another keyword from its centre on, the
    joint placed at a random point of the middle half of the clip."""
    words = np.asarray(LABELS)
    present = {str(words[y]) for y in np.unique(labels)}
    if not any(a != b and frozenset((a, b)) not in SAME_VOWEL for a in present for b in present):
        raise ValueError(f"no keyword pair to splice among {sorted(present)}")
    out = np.zeros((n, audio.shape[-1]), np.float32)
    i = 0
    while i < n:
        a, b = rng.integers(0, len(audio), size=2)
        la, lb = str(words[labels[a]]), str(words[labels[b]])
        if la == lb or frozenset((la, lb)) in SAME_VOWEL:
            continue
        ca, cb = energy_centre(audio[a]), energy_centre(audio[b])
        # match levels at the joint so neither half is a quiet tail of the other
        ga = np.abs(audio[a]).max() + 1e-6
        gb = np.abs(audio[b]).max() + 1e-6
        joined = np.concatenate([audio[a, :ca] / ga, audio[b, cb:] / gb]) * min(ga, gb)
        joint = int(rng.integers(audio.shape[-1] // 4, 3 * audio.shape[-1] // 4))
        out[i] = place(joined, joint - ca, audio.shape[-1])
        i += 1
    return out


def silence_clips(recordings: list[np.ndarray], split: str, n: int, rng: np.random.Generator,
                  length: int = CLIP) -> np.ndarray:
    """n clips without speech: half background stretches of the split's portion, 30 % synthetic noise,
    20 % near-digital silence (a few LSB of dither, or zeros); RMS levels log-uniform in -70..-15 dBFS."""
    noise = portions(recordings, split) if recordings else []
    out = np.zeros((n, length), np.float32)
    for i in range(n):
        u = rng.random()
        kind = "background" if u < 0.5 else "coloured" if u < 0.8 else "quiet"
        if kind == "background" and not noise:
            kind = "coloured"
        if kind == "background":
            x = segment(noise, length, rng).astype(np.float64)
            x /= np.sqrt(np.mean(x**2)) + 1e-12
        elif kind == "coloured":
            x = coloured(str(rng.choice(NOISE_KINDS)), length, rng).astype(np.float64)
        else:
            lsb = rng.integers(0, 4)  # 0 to 3 int16 steps of dither
            out[i] = np.round(rng.standard_normal(length) * lsb) / 32768.0
            continue
        rms = 10 ** (rng.uniform(-70, -15) / 20)
        out[i] = np.clip(x * rms, -1, 1)
    return out


def manifest(root: Path) -> list[dict]:
    """The synthetic-speech manifest written by trainers.synth ([] if none was generated)."""
    p = Path(root) / SYNTH_DIR / SYNTH_MANIFEST
    return json.loads(p.read_text())["clips"] if p.is_file() else []


def load_synth(root: Path, split: str, keywords: bool) -> tuple[np.ndarray, list[dict]]:
    """Synthetic clips of one split: keywords (``keywords=True``) or other words; audio (N, 16000)."""
    rows = [r for r in manifest(root) if r["split"] == split and (r["word"] in LABELS) == keywords]
    audio = np.zeros((len(rows), CLIP), np.float32)
    for i, r in enumerate(rows):
        x, _ = read_wav(str(Path(root) / SYNTH_DIR / r["path"]))
        audio[i] = x[:CLIP]
    return audio, rows


def unknown_set(root: Path, split: str, audio: np.ndarray, labels: np.ndarray, n_nonwords: int,
                rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """A split's unknown clips: every synthetic non-keyword word of the split, then n_nonwords reversed
    and n_nonwords spliced clips of the split's keyword clips; with each clip's kind."""
    synth, _ = load_synth(root, split, keywords=False)
    rev = reversed_clips(audio, n_nonwords, rng)
    spl = spliced_clips(audio, labels, n_nonwords, rng)
    kinds = ["synthetic"] * len(synth) + ["reversed"] * n_nonwords + ["spliced"] * n_nonwords
    return np.concatenate([synth, rev, spl]), kinds
