"""Training data of the listening models (10 labels: the 8 keywords, ``_silence_``, ``_unknown_``).

Every epoch draws a fresh set: the train split's keyword clips and the synthetic keyword renditions of
train (trainers.synth), time-shifted and gain-jittered (trainers.augment); ``_unknown_`` clips, half of
them synthetic words of the train word list, a quarter time-reversed and a quarter spliced train
keyword clips (kws_rpc.lab.listen_data); ``_silence_`` clips from the train portion of the background recordings,
synthetic noise and near-digital silence. Keyword and unknown clips are then mixed with the train
portion of the background noise at an SNR drawn per clip (a share left clean, the rest uniform in a dB
range; kws_rpc.lab.noise). Shares follow the Speech Commands convention: about 10 % silence and 13 %
unknown of the epoch.

Selection (the best epoch) is on a fixed val set built the same way from val only: the 800 clean val
clips, the same clips at 10 dB and at 0 dB with the val noise portion, val unknown clips (synthetic
val words, 200 reversed, 200 spliced) and 400 val silence clips; its accuracy weighs them by count.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from kws_rpc.lab.data import load_noise
from kws_rpc.lab.listen_data import (LISTEN_LABELS, SILENCE_INDEX, UNKNOWN_INDEX, load_synth, reversed_clips,
                            silence_clips, spliced_clips, unknown_set)
from kws_rpc.lab.noise import draw_snrs, mix_batch, portions
from trainers.augment import AugmentConfig, augment_audio


@dataclasses.dataclass(frozen=True)
class ListenConfig:
    silence_share: float = 0.10
    unknown_share: float = 0.13
    synthetic_share: float = 0.5  # of the unknown clips; the rest half reversed, half spliced
    clean_share: float = 0.25  # keyword and unknown clips left without added noise
    snr_db: tuple[float, float] = (0.0, 30.0)
    synth_keywords: bool = True  # the synthetic keyword renditions of train join the keyword clips
    val_snrs: tuple[float, ...] = (10.0, 0.0)  # noisy copies of val in the selection set
    val_nonwords: int = 200
    val_silence: int = 400
    seed: int = 0  # of the selection set


class ListenData:
    """Draws an epoch's audio and 10-way one-hot targets from the train split."""

    def __init__(self, root: Path, cfg: ListenConfig, augment: AugmentConfig,
                 train_audio: np.ndarray, train_labels: np.ndarray) -> None:
        self.cfg, self.augment = cfg, dataclasses.replace(augment, noise_prob=0.0)  # noise: by SNR below
        self.recordings = load_noise(root)
        self.noise = portions(self.recordings, "train")
        words, _ = load_synth(root, "train", keywords=False)
        kw, rows = load_synth(root, "train", keywords=True) if cfg.synth_keywords else (np.zeros((0, 16000)), [])
        if not len(words):
            raise FileNotFoundError(f"no synthetic train words under {root}/synth: run python -m trainers.synth")
        self.words = words
        self.train_audio, self.train_labels = train_audio, np.asarray(train_labels)
        self.keywords = np.concatenate([train_audio, kw.astype(np.float32)])
        self.keyword_labels = np.concatenate([self.train_labels, [LISTEN_LABELS.index(r["word"]) for r in rows]])
        n = len(self.keywords) / (1 - cfg.silence_share - cfg.unknown_share)
        self.n_silence, self.n_unknown = int(round(n * cfg.silence_share)), int(round(n * cfg.unknown_share))

    def epoch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        c = self.cfg
        n_syn = int(round(self.n_unknown * c.synthetic_share))
        n_rev = (self.n_unknown - n_syn) // 2
        n_spl = self.n_unknown - n_syn - n_rev
        unknown = np.concatenate([
            self.words[rng.integers(0, len(self.words), size=n_syn)],
            reversed_clips(self.train_audio, n_rev, rng),
            spliced_clips(self.train_audio, self.train_labels, n_spl, rng),
        ])
        speech = augment_audio(np.concatenate([self.keywords, unknown]), [], rng, self.augment)
        speech = mix_batch(speech, self.noise, draw_snrs(len(speech), rng, c.clean_share, *c.snr_db), rng)
        silence = silence_clips(self.recordings, "train", self.n_silence, rng)
        labels = np.concatenate([self.keyword_labels, np.full(self.n_unknown, UNKNOWN_INDEX),
                                 np.full(self.n_silence, SILENCE_INDEX)]).astype(int)
        return np.concatenate([speech, silence]), np.eye(len(LISTEN_LABELS), dtype=np.float32)[labels]


def selection_set(root: Path, cfg: ListenConfig, val_audio: np.ndarray,
                  val_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed val audio and labels the best epoch is chosen on (see the module docstring)."""
    rng = np.random.default_rng(cfg.seed)
    noise = portions(load_noise(root), "val")
    parts, labels = [val_audio], [val_labels]
    for snr in cfg.val_snrs:
        parts.append(mix_batch(val_audio, noise, snr, rng))
        labels.append(val_labels)
    unknown, _ = unknown_set(root, "val", val_audio, val_labels, cfg.val_nonwords, rng)
    parts += [unknown, silence_clips(load_noise(root), "val", cfg.val_silence, rng)]
    labels += [np.full(len(unknown), UNKNOWN_INDEX), np.full(cfg.val_silence, SILENCE_INDEX)]
    return np.concatenate(parts).astype(np.float32), np.concatenate(labels).astype(int)
