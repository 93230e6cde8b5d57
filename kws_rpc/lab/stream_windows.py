"""Training windows as a streaming detector sees them. Numpy and the kws runtime only (no TensorFlow).

edge.stream runs the little on the last second of the stream every hop (100 ms), so the window it fires on
rarely holds a keyword clip exactly as it was recorded, and most windows it sees hold no keyword at all.
Three kinds of window that 1 s clips lack:

- keyword clips shifted in time inside the window (``shifted``): a word that keeps at least ``keep`` of its
  energy inside is still that keyword;
- partial words (``partial``): a keyword clip shifted so that less than half of its energy is inside is
  ``_unknown_``, as the first or last half of a word is not the word;
- windows cut from keyword-free streams (kws_rpc.lab.streams, the split's own noise and words), above all
  those a shipped model scores as a keyword (``mine``: hard negatives). A window that holds at least
  ``SPEECH_S`` of a non-keyword word (or half of a shorter one) is ``_unknown_``, the rest ``_silence_``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from kws_rpc.audio.features import log_mel
from kws_rpc.lab.data import LABELS
from kws_rpc.lab.listen_data import CLIP, SILENCE_INDEX, UNKNOWN_INDEX, place
from kws_rpc.lab.streams import RATE, Stream
from kws_rpc.model.kws_model import KwsModel

HOP = 1600  # edge.stream's default hop: 100 ms
FRAME = 160  # energy bookkeeping in 10 ms frames
SPEECH_S = 0.1  # this much of a word inside a window makes it _unknown_


def frame_energy(audio: np.ndarray) -> np.ndarray:
    """Energy of each 10 ms frame of each clip, (clips, frames)."""
    n = audio.shape[-1] // FRAME
    return np.square(audio[:, : n * FRAME].astype(np.float64)).reshape(len(audio), n, FRAME).sum(-1)


def inside_share(energy: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Share of each clip's energy (frame_energy) that stays inside the window when the clip moves by
    shifts (samples; positive: later)."""
    cum = np.concatenate([np.zeros((len(energy), 1)), np.cumsum(energy, axis=1)], axis=1)
    n = energy.shape[1]
    k = np.clip(np.round(np.asarray(shifts) / FRAME).astype(int), -n, n)
    rows = np.arange(len(energy))
    inside = np.where(k >= 0, cum[rows, n - np.maximum(k, 0)], cum[rows, n] - cum[rows, np.maximum(-k, 0)])
    return inside / np.maximum(cum[:, n], 1e-12)


def shifted(audio: np.ndarray, max_shift: int, rng: np.random.Generator, keep: float = 0.9) -> np.ndarray:
    """Each clip moved by a random shift in [-max_shift, max_shift] samples; a shift that would push more
    than 1 - keep of the word's energy out of the window is halved, up to three times, then dropped."""
    energy = frame_energy(audio)
    shifts = rng.integers(-max_shift, max_shift + 1, size=len(audio))
    for _ in range(3):
        out = inside_share(energy, shifts) < keep
        shifts[out] //= 2
    shifts[inside_share(energy, shifts) < keep] = 0
    return np.stack([place(x, int(s), audio.shape[-1]) for x, s in zip(audio, shifts)])


def partial(audio: np.ndarray, n: int, rng: np.random.Generator, most: float = 0.45,
            least: float = 0.05) -> np.ndarray:
    """n partial words: keyword clips shifted so that between ``least`` and ``most`` of their energy is
    inside the window (the word's start or its end)."""
    energy = frame_energy(audio)
    length = audio.shape[-1]
    picked: list[tuple[int, int]] = []
    for _ in range(50):
        idx = rng.integers(0, len(audio), size=2 * n)
        shifts = rng.choice([-1, 1], size=2 * n) * rng.integers(length // 5, length, size=2 * n)
        share = inside_share(energy[idx], shifts)
        ok = (share >= least) & (share < most)
        picked += list(zip(idx[ok].tolist(), shifts[ok].tolist()))
        if len(picked) >= n:
            break
    if len(picked) < n:
        raise ValueError(f"only {len(picked)} of {n} partial words found")
    return np.stack([place(audio[i], s, length) for i, s in picked[:n]])


@dataclasses.dataclass
class Mined:
    """Windows cut from keyword-free streams: audio (n, 16000), label (_silence_ or _unknown_ index), the
    mining model's highest keyword probability on it, and whether it was kept as a hard one."""

    audio: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    hard: np.ndarray

    def take(self, idx: np.ndarray) -> "Mined":
        return Mined(self.audio[idx], self.labels[idx], self.scores[idx], self.hard[idx])


def window_labels(stream: Stream, starts: np.ndarray) -> np.ndarray:
    """_unknown_ for windows holding SPEECH_S of a word (or half of a shorter one), else _silence_."""
    labels = np.full(len(starts), SILENCE_INDEX)
    lo, hi = starts / RATE, (starts + CLIP) / RATE
    for a, b in stream.speech:
        overlap = np.minimum(hi, b) - np.maximum(lo, a)
        labels[overlap >= min(SPEECH_S, (b - a) / 2)] = UNKNOWN_INDEX
    return labels


def mine(model: KwsModel, streams: Iterable[Stream], threshold: float, random_share: float,
         rng: np.random.Generator, batch: int = 512) -> Mined:
    """Every hop window of the streams that ``model`` scores a keyword (its first len(LABELS) outputs) at or
    above ``threshold``, and a random ``random_share`` of the others. As in a Listener (edge.stream), the
    stream's frames are computed once (a window's features are those of its second cut out as a clip) and
    the model runs on a 1 s window every HOP."""
    cfg = model.feature_config
    hop_frames, width = HOP // cfg.frame_step, cfg.num_frames
    parts: list[Mined] = []
    for stream in streams:
        frames = log_mel(stream.audio, dataclasses.replace(cfg, clip_samples=len(stream.audio)))
        first = np.arange(0, len(frames) - width + 1, hop_frames)
        scores = np.concatenate([
            model.predict(np.stack([frames[f : f + width] for f in first[i : i + batch]]))[:, : len(LABELS)].max(-1)
            for i in range(0, len(first), batch)])
        hard = scores >= threshold
        keep = hard | (rng.random(len(first)) < random_share)
        starts = first[keep] * cfg.frame_step
        parts.append(Mined(np.stack([stream.audio[s : s + CLIP] for s in starts]) if len(starts)
                           else np.zeros((0, CLIP), np.float32),
                           window_labels(stream, starts), scores[keep], hard[keep]))
    return Mined(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Mined)))
