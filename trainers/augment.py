"""Data augmentation in numpy: time shift, background noise and gain on audio; SpecAugment-style masks
on features. Seeded by the caller's Generator so a run is reproducible."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    time_shift: int = 1600
    """Largest shift in samples, either way (100 ms at 16 kHz)."""
    noise_prob: float = 0.8
    noise_volume: float = 0.1
    gain: tuple[float, float] = (0.8, 1.25)
    time_masks: int = 2
    time_mask_max: int = 5
    freq_masks: int = 2
    freq_mask_max: int = 4
    quiet_prob: float = 0.0
    """Share of clips turned into quiet recordings: attenuated by quiet_db and re-quantized to 16 bits, as
    a microphone at far too low a gain records them (some Speech Commands clips peak at -50 to -75 dBFS)."""
    quiet_db: tuple[float, float] = (25.0, 65.0)
    mixup_prob: float = 0.0
    """Share of clips mixed with another clip of the batch (mixup, Zhang et al. 2018), after the audio
    augmentation: x = lam * x_i + (1 - lam) * x_j, lam ~ Beta(mixup_alpha, mixup_alpha) folded to >= 0.5;
    their one-hot targets mix alike, and teachers label the mixed audio itself (consistent distillation)."""
    mixup_alpha: float = 0.4


def augment_audio(x: np.ndarray, noise: list[np.ndarray], rng: np.random.Generator,
                  cfg: AugmentConfig) -> np.ndarray:
    n, length = x.shape
    out = np.zeros_like(x)
    shifts = rng.integers(-cfg.time_shift, cfg.time_shift + 1, size=n)
    for i, s in enumerate(shifts):
        if s >= 0:
            out[i, s:] = x[i, : length - s]
        else:
            out[i, :s] = x[i, -s:]
    out *= rng.uniform(*cfg.gain, size=(n, 1)).astype(np.float32)
    if noise and cfg.noise_prob > 0:
        for i in np.flatnonzero(rng.random(n) < cfg.noise_prob):
            rec = noise[rng.integers(len(noise))]
            start = rng.integers(0, len(rec) - length)
            out[i] += rng.uniform(0, cfg.noise_volume) * rec[start : start + length]
    out = np.clip(out, -1.0, 1.0)
    if cfg.quiet_prob > 0:
        quiet = np.flatnonzero(rng.random(n) < cfg.quiet_prob)
        gain = 10.0 ** (-rng.uniform(*cfg.quiet_db, size=(len(quiet), 1)) / 20.0)
        out[quiet] = np.round(out[quiet] * gain * 32768.0).astype(np.float32) / np.float32(32768.0)
    return out


def spec_augment(f: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, fill: np.ndarray) -> np.ndarray:
    """Masks random bands of frames and of coefficients with ``fill`` (the per-coefficient training mean,
    which the model's normalisation maps to zero: SpecAugment's mean masking)."""
    f = f.copy()
    n, frames, coeffs = f.shape
    for axis, count, width, size in ((1, cfg.time_masks, cfg.time_mask_max, frames),
                                      (2, cfg.freq_masks, cfg.freq_mask_max, coeffs)):
        for _ in range(count if width > 0 else 0):
            w = rng.integers(0, width + 1, size=n)
            s = rng.integers(0, np.maximum(size - w, 1))
            idx = np.arange(size)[None, :]
            mask = (idx >= s[:, None]) & (idx < (s + w)[:, None])
            if axis == 1:
                f[mask] = fill
            else:
                f.transpose(0, 2, 1)[mask] = fill[np.nonzero(mask)[1]][:, None]
    return f


def mixup(x: np.ndarray, targets: np.ndarray, rng: np.random.Generator,
          cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Audio and targets with a share cfg.mixup_prob of the clips mixed with a random partner."""
    if cfg.mixup_prob <= 0:
        return x, targets
    n = len(x)
    which = np.flatnonzero(rng.random(n) < cfg.mixup_prob)
    partner = rng.integers(0, n, size=len(which))
    lam = rng.beta(cfg.mixup_alpha, cfg.mixup_alpha, size=len(which)).astype(np.float32)
    lam = np.maximum(lam, 1 - lam)  # the clip keeps the larger share: its own label stays the top one
    x, targets = x.copy(), targets.copy()
    x[which] = lam[:, None] * x[which] + (1 - lam[:, None]) * x[partner]
    targets[which] = lam[:, None] * targets[which] + (1 - lam[:, None]) * targets[partner]
    return x, targets
