"""Room noise for training and evaluation alike: the background recordings split by time, mixing at a
chosen SNR, and synthetic noise colours. Numpy only: the trainers, `kws_rpc.evaluate` and a streaming
benchmark must mix noise the same way, or their SNR figures would not be comparable.

SNR is measured against the clip's loudest 300 ms (``peak_window_power``), not its mean over 1 s: a
keyword fills a third to a half of its clip, and a mean over the silence around it would call a clip
loud in noise "clean". The noise power is its mean over the whole segment added.

Each of the six recordings of ``_background_noise_`` is cut by time into train/val/test portions
(``PORTIONS``, 80/10/10 of its samples, in that order), so val and test are mixed with noise no model
has heard.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SAMPLE_RATE = 16000
PEAK_WINDOW = 4800  # 300 ms at 16 kHz
PORTIONS: dict[str, tuple[float, float]] = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}
_EPS = 1e-12


def portion(recording: np.ndarray, split: str) -> np.ndarray:
    """The split's contiguous share of one recording (train: the first 80 %, val: the next 10 %, test:
    the last 10 %); the three are disjoint and cover it."""
    if split not in PORTIONS:
        raise ValueError(f"unknown split {split!r}; choose from {tuple(PORTIONS)}")
    lo, hi = PORTIONS[split]
    n = len(recording)
    return np.asarray(recording[int(round(lo * n)) : int(round(hi * n))], dtype=np.float32)


def portions(recordings: Sequence[np.ndarray], split: str) -> list[np.ndarray]:
    return [portion(r, split) for r in recordings]


def peak_window_power(x: np.ndarray, window: int = PEAK_WINDOW) -> np.ndarray:
    """Mean power of the loudest ``window`` samples of each clip (last axis); the whole clip if shorter."""
    x = np.asarray(x, dtype=np.float64)
    single = x.ndim == 1
    x2 = np.atleast_2d(x) ** 2
    w = min(window, x2.shape[-1])
    c = np.concatenate([np.zeros((len(x2), 1)), np.cumsum(x2, axis=-1)], axis=-1)
    out = ((c[:, w:] - c[:, :-w]) / w).max(axis=-1)
    return out[0] if single else out


def median_reference(clips: np.ndarray) -> float:
    """The power of the median clip's loudest 300 ms: the reference of a fixed noise level, as a room's
    noise is the same whether the word was spoken loud or soft (the streams are mixed at it)."""
    return float(np.median(peak_window_power(clips)))


def snr_db(clip: np.ndarray, noise: np.ndarray) -> float:
    """SNR in dB of ``clip`` (its loudest 300 ms) against ``noise`` (its mean power)."""
    return float(10 * np.log10((peak_window_power(clip) + _EPS) / (np.mean(np.square(noise, dtype=np.float64)) + _EPS)))


def scale_for_snr(clip: np.ndarray, noise: np.ndarray, snr: float, reference: float | None = None) -> float:
    """The gain g for which snr_db(clip, g * noise) == snr; with ``reference`` (a power), the SNR is against
    that power instead of the clip's own loudest 300 ms: a fixed noise level for every clip."""
    p_noise = float(np.mean(np.square(noise, dtype=np.float64)))
    if p_noise <= 0:
        return 0.0
    p_clip = peak_window_power(clip) if reference is None else reference
    return float(np.sqrt(p_clip / (p_noise * 10 ** (snr / 10))))


def mix(clip: np.ndarray, noise: np.ndarray, snr: float, reference: float | None = None) -> np.ndarray:
    """clip + noise at ``snr`` dB (against ``reference`` if given, see scale_for_snr); if the sum would clip,
    both are scaled down together (the SNR holds)."""
    g = scale_for_snr(clip, noise, snr, reference)
    out = np.asarray(clip, dtype=np.float64) + g * np.asarray(noise, dtype=np.float64)
    peak = np.abs(out).max()
    if peak > 1.0:
        out /= peak
    return out.astype(np.float32)


def segment(recordings: Sequence[np.ndarray], length: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``length``-sample stretch of a random recording."""
    rec = recordings[rng.integers(len(recordings))]
    if len(rec) <= length:
        return np.resize(rec, length).astype(np.float32)
    start = rng.integers(0, len(rec) - length)
    return np.asarray(rec[start : start + length], dtype=np.float32)


def draw_snrs(n: int, rng: np.random.Generator, clean_share: float = 0.25,
              low: float = 0.0, high: float = 30.0) -> np.ndarray:
    """SNRs for n clips: ``clean_share`` of them inf (no noise), the rest uniform in [low, high] dB."""
    snrs = rng.uniform(low, high, size=n)
    snrs[rng.random(n) < clean_share] = np.inf
    return snrs


def mix_batch(clips: np.ndarray, recordings: Sequence[np.ndarray], snrs: np.ndarray | float,
              rng: np.random.Generator, reference: float | None = None) -> np.ndarray:
    """Each clip mixed with a random stretch of ``recordings`` at its SNR (inf: left clean), against the
    clip's own loudest 300 ms, or against the power ``reference`` for every clip (see scale_for_snr)."""
    clips = np.asarray(clips, dtype=np.float32)
    snrs = np.broadcast_to(np.asarray(snrs, dtype=np.float64), (len(clips),))
    out = clips.copy()
    for i, s in enumerate(snrs):
        if np.isfinite(s):
            out[i] = mix(clips[i], segment(recordings, clips.shape[-1], rng), s, reference)
    return out


def coloured(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic noise of unit RMS: 'white', 'pink' (1/f power), 'brown' (1/f^2) or 'hum' (50 or 60 Hz
    mains with random harmonics and a little white noise)."""
    if kind == "hum":
        t = np.arange(n) / SAMPLE_RATE
        f0 = rng.choice([50.0, 60.0])
        x = sum(rng.uniform(0.1, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi))
                for k in range(1, 8))
        x = x + 0.02 * rng.standard_normal(n)
    else:
        exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}[kind]
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        spec[1:] /= f[1:] ** exponent
        spec[0] = 0
        x = np.fft.irfft(spec, n=n)
    x = np.asarray(x, dtype=np.float64)
    return (x / (np.sqrt(np.mean(x**2)) + _EPS)).astype(np.float32)


NOISE_KINDS = ("white", "pink", "brown", "hum")
