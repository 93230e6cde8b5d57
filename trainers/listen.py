"""Training data of the listening models (10 labels: the 8 keywords, ``_silence_``, ``_unknown_``).

Every epoch draws a fresh set: the train split's keyword clips and the synthetic keyword renditions of
train (trainers.synth), time-shifted and gain-jittered (trainers.augment); ``_unknown_`` clips, half of
them synthetic words of the train word list, a quarter time-reversed and a quarter spliced train
keyword clips (kws_rpc.lab.listen_data); ``_silence_`` clips from the train portion of the background recordings,
synthetic noise and near-digital silence. Keyword and unknown clips are then mixed with the train
portion of the background noise at an SNR drawn per clip (a share left clean, the rest uniform in a dB
range; kws_rpc.lab.noise), set against each clip's loudest 300 ms or, with ``level="room"``, against the
split's median clip, so that a soft word meets the same noise as a loud one. Shares follow the Speech
Commands convention: about 10 % silence and 13 % unknown of the epoch.

With a ``StreamConfig`` the epoch also holds windows as a streaming detector sees them
(kws_rpc.lab.stream_windows): a share of the keyword clips shifted inside the window, partial words as
``_unknown_``, and windows cut from keyword-free train streams (kws_rpc.lab.streams: train noise portion,
synthetic train words), mostly those a shipped model (the miner) scores as a keyword: hard negatives,
mined once before training.

Selection (the best epoch) is on a fixed val set built the same way from val only: the 800 clean val
clips, the same clips at 10 dB and at 0 dB with the val noise portion (at the training's level), val
unknown clips (synthetic val words, 200 reversed, 200 spliced) and 400 val silence clips, and with a ``StreamConfig`` the hard
negatives mined from keyword-free val streams; its accuracy weighs them by count.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from kws_rpc.lab.data import load_noise
from kws_rpc.lab.listen_data import (LISTEN_LABELS, SILENCE_INDEX, UNKNOWN_INDEX, load_synth, reversed_clips,
                            silence_clips, spliced_clips, unknown_set)
from kws_rpc.lab.noise import draw_snrs, median_reference, mix_batch, portions
from kws_rpc.lab.stream_windows import Mined, mine, partial, shifted
from kws_rpc.lab.streams import keyword_free, material
from kws_rpc.model.kws_model import KwsModel
from trainers.augment import AugmentConfig, augment_audio

log = logging.getLogger("trainers.listen")


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """Streaming windows in every epoch (shares are of the whole epoch unless said otherwise)."""

    miner: str = "little_listen"  # the shipped model whose keyword scores pick the hard negatives
    threshold: float = 0.3  # a window it scores a keyword at or above this is a hard negative
    hours: float = 4.0  # keyword-free train streams mined once, before training ...
    snrs: tuple[float, ...] = (20.0, 10.0, 0.0)  # ... in equal parts at these SNRs
    random_share: float = 0.03  # of their other windows, kept as plain stream negatives
    shifted_share: float = 0.5  # of the keyword clips, moved by up to max_shift inside the window
    max_shift: int = 4000  # samples (250 ms); a word keeps >= 90 % of its energy inside
    partial_share: float = 0.04  # partial keyword clips (< 45 % of the energy inside), _unknown_
    hard_share: float = 0.12  # mined hard negatives
    free_share: float = 0.04  # other windows of the keyword-free streams
    seed: int = 1  # of the mined streams (make bench-stream's are seed 0)
    val_hours: float = 1.0  # keyword-free val streams (at 10 dB) mined for the selection set ...
    val_hard: int = 600  # ... at most this many of their hard negatives join it
    keyword_copies: int = 1  # each keyword clip drawn this many times an epoch (each copy augmented on its own),
    # so that the stream windows come on top of the keywords instead of diluting them


def mine_split(root: Path, split: str, cfg: StreamConfig, miner: KwsModel, hours: float,
               snrs: tuple[float, ...], random_share: float) -> Mined:
    """Windows of keyword-free streams of the split (its noise portion and words), mined by ``miner``."""
    t0 = time.time()
    m = material(split, root, cfg.seed)
    streams = (s for snr in snrs
               for s in keyword_free(hours / len(snrs), m["others"], m["recordings"], m["ref"], m["rng"], snr))
    mined = mine(miner, streams, cfg.threshold, random_share, m["rng"])
    log.info("%s: %g h of keyword-free %s streams mined in %.0f s: %d hard windows (%s >= %.2f), %d others",
             split, hours, split, time.time() - t0, int(mined.hard.sum()), miner.name, cfg.threshold,
             int((~mined.hard).sum()))
    return mined


@dataclasses.dataclass(frozen=True)
class ListenConfig:
    silence_share: float = 0.10
    unknown_share: float = 0.13
    synthetic_share: float = 0.5  # of the unknown clips; the rest half reversed, half spliced
    clean_share: float = 0.25  # keyword and unknown clips left without added noise
    snr_db: tuple[float, float] = (0.0, 30.0)
    level: str = "clip"  # "clip": each SNR against the clip's own loudest 300 ms; "room": against the split's
    # median clip, as a room's noise meets soft and loud words alike (kws_rpc.lab.noise.median_reference)
    synth_keywords: bool = True  # the synthetic keyword renditions of train join the keyword clips
    val_snrs: tuple[float, ...] = (10.0, 0.0)  # noisy copies of val in the selection set
    val_nonwords: int = 200
    val_silence: int = 400
    seed: int = 0  # of the selection set
    stream: StreamConfig | None = None  # streaming windows (kws_rpc.lab.stream_windows), None: clips only

    def __post_init__(self) -> None:
        if self.level not in ("clip", "room"):
            raise ValueError(f"ListenConfig.level must be 'clip' or 'room', not {self.level!r}")

    def reference(self, keywords: np.ndarray) -> float | None:
        """The power noise levels are set against: None (each clip's own) or the split's median clip."""
        return median_reference(keywords) if self.level == "room" else None


class ListenData:
    """Draws an epoch's audio and 10-way one-hot targets from the train split."""

    def __init__(self, root: Path, cfg: ListenConfig, augment: AugmentConfig,
                 train_audio: np.ndarray, train_labels: np.ndarray, models: Path = Path("models")) -> None:
        self.cfg, self.augment = cfg, dataclasses.replace(augment, noise_prob=0.0)  # noise: by SNR below
        self.recordings = load_noise(root)
        self.noise = portions(self.recordings, "train")
        words, _ = load_synth(root, "train", keywords=False)
        kw, rows = load_synth(root, "train", keywords=True) if cfg.synth_keywords else (np.zeros((0, 16000)), [])
        if not len(words):
            raise FileNotFoundError(f"no synthetic train words under {root}/synth: run python -m trainers.synth")
        self.words = words
        self.train_audio, self.train_labels = train_audio, np.asarray(train_labels)
        self.reference = cfg.reference(train_audio)
        self.keywords = np.concatenate([train_audio, kw.astype(np.float32)])
        self.keyword_labels = np.concatenate([self.train_labels, [LISTEN_LABELS.index(r["word"]) for r in rows]])
        st = cfg.stream
        extra = st.partial_share + st.hard_share + st.free_share if st else 0.0
        n = len(self.keywords) / (1 - cfg.silence_share - cfg.unknown_share - extra)
        self.n_silence, self.n_unknown = int(round(n * cfg.silence_share)), int(round(n * cfg.unknown_share))
        self.n_partial = self.n_hard = self.n_free = 0
        if st is not None:
            self.n_partial, self.n_hard, self.n_free = (int(round(n * x)) for x in
                                                        (st.partial_share, st.hard_share, st.free_share))
            mined = mine_split(root, "train", st, KwsModel(Path(models) / f"{st.miner}.tflite"), st.hours,
                               st.snrs, st.random_share)
            self.hard, self.free = mined.take(np.flatnonzero(mined.hard)), mined.take(np.flatnonzero(~mined.hard))
            if not len(self.hard.audio) or not len(self.free.audio):
                raise ValueError(f"mining found {len(self.hard.audio)} hard and {len(self.free.audio)} other windows")

    @property
    def size(self) -> int:
        """Clips in an epoch."""
        copies = self.cfg.stream.keyword_copies if self.cfg.stream else 1
        return copies * len(self.keywords) + self.n_unknown + self.n_partial + self.n_silence + self.n_hard + self.n_free

    def epoch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        c = self.cfg
        n_syn = int(round(self.n_unknown * c.synthetic_share))
        n_rev = (self.n_unknown - n_syn) // 2
        n_spl = self.n_unknown - n_syn - n_rev
        keywords, keyword_labels = self.keywords, self.keyword_labels
        if c.stream is not None:
            keywords = np.concatenate([keywords] * c.stream.keyword_copies)
            keyword_labels = np.concatenate([keyword_labels] * c.stream.keyword_copies)
            moved = np.flatnonzero(rng.random(len(keywords)) < c.stream.shifted_share)
            keywords[moved] = shifted(keywords[moved], c.stream.max_shift, rng)
        unknown = np.concatenate([
            self.words[rng.integers(0, len(self.words), size=n_syn)],
            reversed_clips(self.train_audio, n_rev, rng),
            spliced_clips(self.train_audio, self.train_labels, n_spl, rng),
            *([partial(self.train_audio, self.n_partial, rng)] if self.n_partial else []),
        ])
        speech = augment_audio(np.concatenate([keywords, unknown]), [], rng, self.augment)
        speech = mix_batch(speech, self.noise, draw_snrs(len(speech), rng, c.clean_share, *c.snr_db), rng,
                           self.reference)
        silence = silence_clips(self.recordings, "train", self.n_silence, rng)
        audio = [speech, silence]
        labels = [keyword_labels, np.full(len(unknown), UNKNOWN_INDEX), np.full(self.n_silence, SILENCE_INDEX)]
        if c.stream is not None:  # stream windows keep their own noise; only their gain is jittered
            for pool, n in ((self.hard, self.n_hard), (self.free, self.n_free)):
                w = pool.take(rng.integers(0, len(pool.audio), size=n))
                audio.append(np.clip(w.audio * rng.uniform(*self.augment.gain, size=(n, 1)).astype(np.float32), -1, 1))
                labels.append(w.labels)
        y = np.concatenate(labels).astype(int)
        return np.concatenate(audio), np.eye(len(LISTEN_LABELS), dtype=np.float32)[y]


def selection_set(root: Path, cfg: ListenConfig, val_audio: np.ndarray, val_labels: np.ndarray,
                  models: Path = Path("models")) -> tuple[np.ndarray, np.ndarray]:
    """The fixed val audio and labels the best epoch is chosen on (see the module docstring)."""
    rng = np.random.default_rng(cfg.seed)
    noise = portions(load_noise(root), "val")
    parts, labels = [val_audio], [val_labels]
    reference = cfg.reference(val_audio)
    for snr in cfg.val_snrs:
        parts.append(mix_batch(val_audio, noise, snr, rng, reference))
        labels.append(val_labels)
    unknown, _ = unknown_set(root, "val", val_audio, val_labels, cfg.val_nonwords, rng)
    parts += [unknown, silence_clips(load_noise(root), "val", cfg.val_silence, rng)]
    labels += [np.full(len(unknown), UNKNOWN_INDEX), np.full(cfg.val_silence, SILENCE_INDEX)]
    if cfg.stream is not None:
        st = cfg.stream
        mined = mine_split(root, "val", st, KwsModel(Path(models) / f"{st.miner}.tflite"), st.val_hours, (10.0,), 0.0)
        hard = mined.take(np.random.default_rng(cfg.seed).permutation(len(mined.audio))[: st.val_hard])
        parts.append(hard.audio)
        labels.append(hard.labels)
    return np.concatenate(parts).astype(np.float32), np.concatenate(labels).astype(int)
