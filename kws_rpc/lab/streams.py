"""Long streams built from the data set, deterministic by seed: what `make bench-stream` listens to and
what the streaming training windows (kws_rpc.lab.stream_windows) are cut from. Numpy only.

As TensorFlow's Speech Commands streaming test does, a split's keyword clips are placed one after the other
with random gaps (here 0.5-2.5 s) in one long stream, and background noise runs under all of it, at an SNR
against the loudest 300 ms of the split's median clip (kws_rpc.lab.noise). Beside them, hours of audio with
no keyword in it: the split's portion of the background recordings and synthetic noise, with the split's
synthetic non-keyword words (trainers.synth) every 2-8 s. Every stream of a split is built from that
split's clips, noise portion and words only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kws_rpc.lab.data import LABELS, load_noise, load_split
from kws_rpc.lab.listen_data import load_synth, reversed_clips
from kws_rpc.lab.noise import NOISE_KINDS, coloured, median_reference, portions

RATE = 16000
CHUNK_S = 600.0  # keyword-free audio is made and heard ten minutes at a time
SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}  # seeds a split's streams apart from the others'


@dataclasses.dataclass(frozen=True)
class Stream:
    name: str
    audio: np.ndarray
    keywords: list[tuple[float, float, str]]  # (clip start s, clip end s, label)
    # keyword-free streams: where each non-keyword word is (first to last non-zero sample of its clip), s
    speech: list[tuple[float, float]] = dataclasses.field(default_factory=list)


def noise_bed(n: int, recordings: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """n samples of noise at unit mean power: stretches of 1-5 s of the recordings and of synthetic noise."""
    parts, got = [], 0
    while got < n:
        k = int(rng.integers(RATE, 5 * RATE))
        if rng.random() < 0.8:
            rec = recordings[int(rng.integers(len(recordings)))]
            start = int(rng.integers(0, max(1, len(rec) - k)))
            x = np.resize(rec[start : start + k], k).astype(np.float64)
        else:
            x = coloured(NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))], k, rng).astype(np.float64)
        parts.append(x / (np.sqrt(np.mean(x**2)) + 1e-12))
        got += k
    return np.concatenate(parts)[:n].astype(np.float32)


def noise_gain(reference_power: float, snr: float) -> float:
    """The gain on a unit-power noise bed that puts it snr dB below the reference (the median clip's loudest 300 ms)."""
    return float(np.sqrt(reference_power / 10 ** (snr / 10)))


def keyword_stream(audio: np.ndarray, labels: np.ndarray, recordings: list[np.ndarray], ref: float, snr: float,
                   rng: np.random.Generator) -> Stream:
    order = rng.permutation(len(audio))
    gaps = (rng.uniform(0.5, 2.5, len(audio)) * RATE).astype(int)
    total = int(gaps.sum()) + len(audio) * audio.shape[1] + RATE
    x = np.zeros(total, np.float32)
    keywords, pos = [], 0
    for i, gap in zip(order, gaps):
        pos += gap
        x[pos : pos + audio.shape[1]] += audio[i]
        keywords.append((pos / RATE, (pos + audio.shape[1]) / RATE, LABELS[labels[i]]))
        pos += audio.shape[1]
    x += noise_gain(ref, snr) * noise_bed(total, recordings, rng)
    return Stream(f"keywords @ {snr:g} dB", np.clip(x, -1, 1), keywords)


def keyword_free(hours: float, others: np.ndarray, recordings: list[np.ndarray], ref: float,
                 rng: np.random.Generator, snr: float = 10.0) -> Iterator[Stream]:
    """Ten-minute streams of noise with non-keyword speech every 2-8 s, `hours` of them in all."""
    for c in range(int(np.ceil(hours * 3600 / CHUNK_S))):
        n = int(min(CHUNK_S, hours * 3600 - c * CHUNK_S) * RATE)
        x = noise_gain(ref, snr) * noise_bed(n, recordings, rng)
        pos = int(rng.uniform(2, 8) * RATE)
        speech = []
        while pos + others.shape[1] < n:
            clip = others[int(rng.integers(len(others)))]
            x[pos : pos + others.shape[1]] += clip
            voiced = np.flatnonzero(np.abs(clip) > 1e-4)
            if len(voiced):
                speech.append(((pos + voiced[0]) / RATE, (pos + voiced[-1] + 1) / RATE))
            pos += others.shape[1] + int(rng.uniform(2, 8) * RATE)
        yield Stream(f"keyword-free {c}", np.clip(x, -1, 1), [], speech)


def material(split: str, root: Path, seed: int) -> dict[str, Any]:
    """What a split's streams are made of, and the generator that makes them (seeded by seed and split)."""
    audio, labels, _ = load_split(split, root)
    recordings = portions(load_noise(root), split)
    ref = median_reference(audio)
    rng = np.random.default_rng([seed, SPLIT_INDEX[split]])
    # the keyword-free audio's speech: the split's synthetic non-keyword words (trainers.synth). Without that
    # cache, time-reversed keyword clips stand in (spliced halves are not used: they hold real keyword halves)
    synth, _ = load_synth(root, split, keywords=False)
    others = synth if len(synth) else reversed_clips(audio, len(audio) // 2, rng)
    return {"audio": audio, "labels": labels, "recordings": recordings, "ref": ref, "rng": rng, "others": others}
