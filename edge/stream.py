"""Keyword spotting on an endless stream: the little model on a sliding 1 s window, every hop.

- ``FrameStream`` turns audio into log-mel frames, each computed once as its samples arrive, with the
  same function as whole clips (``kws_rpc.features``), so a 1 s window of the stream has exactly the
  features of that second cut out as a clip.
- ``Detector`` smooths the model's probabilities over the last few hops, fires when a keyword's smoothed
  probability stays at or above a threshold for ``patience`` hops, and then stays quiet for a refractory
  period (TensorFlow's RecognizeCommands, openWakeWord's patience and debounce). Labels that start with
  ``_`` (``_silence_``, ``_unknown_``) never fire: a model that has them rejects noise and other words.
- ``Listener`` joins them: push audio, get detections. It knows nothing of transports: asking the
  server to verify an unsure detection is the caller's job (``sure`` says which need it).
"""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from kws_rpc.audio.features import FeatureConfig, log_mel


def is_keyword(label: str) -> bool:
    """False for a model's rejection outputs (``_silence_``, ``_unknown_``), which never fire."""
    return not label.startswith("_")


class FrameStream:
    """Log-mel (or MFCC) frames of a stream: ``push`` samples, get the frames they complete."""

    def __init__(self, cfg: FeatureConfig, group: int = 10) -> None:
        if cfg.peak_normalize:
            raise ValueError("a stream cannot be peak-normalized per clip: use a model whose features do "
                             "not normalize (peak_normalize 0)")
        self.cfg = cfg
        # Frames are computed `group` at a time (one call, one FFT batch) and the rest one by one: two
        # framings only, so the feature code's per-config caches stay warm.
        self._framing = {n: dataclasses.replace(cfg, clip_samples=cfg.frame_length + (n - 1) * cfg.frame_step)
                         for n in (1, group)}
        self._group = group
        self._pending = np.zeros(0, np.float32)
        self.frames = 0  # frames produced so far; frame i covers samples [i * step, i * step + length)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """New frames (n, features) for these float32 samples in [-1, 1] at the config's rate."""
        buf = np.concatenate([self._pending, np.asarray(samples, np.float32)])
        length, step = self.cfg.frame_length, self.cfg.frame_step
        n = 0 if len(buf) < length else 1 + (len(buf) - length) // step
        out = []
        done = 0
        while done < n:
            k = self._group if n - done >= self._group else 1
            framing = self._framing[k]
            out.append(log_mel(buf[done * step : done * step + framing.clip_samples], framing).reshape(k, -1))
            done += k
        self._pending = buf[n * step :]
        self.frames += n
        return np.concatenate(out) if out else np.zeros((0, self.cfg.num_features), np.float32)


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """How probabilities become detections; chosen on val streams and kept in a JSON file."""

    hop_ms: int = 100  # the model runs on the last 1 s every hop
    smooth: int = 3  # probabilities averaged over this many hops
    threshold: float = 0.6  # a keyword fires when its smoothed probability reaches this
    patience: int = 1  # ... on this many consecutive hops
    refractory_s: float = 1.0  # no second detection this soon after one
    sure: float = 1.01  # detections at or above this need no verification (above 1: every one is verified)
    settle: int = 0  # hops an unsure detection waits for the little's score to peak; the window at the peak
    # (the word best centred in it) is the one the server verifies
    confirm: float = 0.0  # big's probability of the keyword it names must reach this, or the detection is
    # rejected (0: any keyword big names stands; a reply without a probability is taken as it is)


    def __post_init__(self) -> None:
        if self.hop_ms <= 0 or self.smooth < 1 or self.patience < 1 or self.refractory_s < 0 or not 0 <= self.settle <= 5:
            raise ValueError(f"bad detector config: {self}")
        if not 0 < self.threshold <= 1:
            raise ValueError("threshold must be in (0, 1]")
        if not 0 <= self.confirm <= 1:
            raise ValueError("confirm must be in [0, 1]")

    def confirms(self, label: str, score: float | None) -> bool:
        """Whether the verifier's answer stands: a keyword, named with at least ``confirm`` (an answer without
        a probability is taken as it is)."""
        return is_keyword(label) and (score is None or score >= self.confirm)

    @classmethod
    def load(cls, path: str | Path, model: str | None = None, verified: bool = False) -> "DetectorConfig":
        """From a JSON file: {"detector": {...}} or, per model, {"models": {"little": {...}}} and, for a
        little whose unsure detections the server verifies, {"verified": {"little": {...}}}."""
        return cls.from_doc(json.loads(Path(path).read_text()), model, verified, source=str(path))

    @classmethod
    def from_doc(cls, doc: dict[str, Any], model: str | None = None, verified: bool = False,
                 source: str = "detector settings") -> "DetectorConfig":
        """From a detector file's parsed JSON (see load)."""
        entry: Any = None
        if model and verified:
            entry = doc.get("verified", {}).get(model)
        if entry is None and model:
            entry = doc.get("models", {}).get(model)
        if entry is None:  # a per-model file without this model: its "detector" defaults; else a flat file
            entry = doc.get("detector", {} if {"models", "verified"} & set(doc) else doc)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(entry) - names - {"chosen_by"}
        if unknown:
            raise ValueError(f"{source}: unknown detector settings {sorted(unknown)} (known: {sorted(names)})")
        return cls(**{k: v for k, v in entry.items() if k in names})


@dataclasses.dataclass(frozen=True)
class Detection:
    t: float  # seconds from the start of the stream to the end of the window that fired
    label: str
    score: float  # the label's smoothed probability
    sure: bool  # score >= DetectorConfig.sure: no need to ask the server
    audio: np.ndarray  # 1 s of audio for a server to verify: the window that fired, or its peak (settle)
    handed_t: float  # stream time at which it was handed over: t, or t + the settle hops


@dataclasses.dataclass
class _Settling:
    """An unsure detection waiting ``settle`` hops for the little's score of its label to peak."""

    t: float
    label: str
    index: int
    score: float
    best: float  # the label's highest (raw) probability so far ...
    best_t: float  # ... at the window ending here
    hops_left: int


class Detector:
    """Smoothing, threshold, patience and refractory period over one probability vector per hop."""

    def __init__(self, labels: list[str], cfg: DetectorConfig) -> None:
        self.labels, self.cfg = list(labels), cfg
        self._keyword = np.array([is_keyword(lb) for lb in labels])
        self._recent: collections.deque[np.ndarray] = collections.deque(maxlen=cfg.smooth)
        self._streak_label, self._streak = -1, 0
        self._last_t = -np.inf

    def update(self, probs: np.ndarray, t: float) -> tuple[str, float] | None:
        """The (label, score) that fires at time t, if any."""
        self._recent.append(np.asarray(probs, np.float32))
        smoothed = np.mean(self._recent, axis=0)
        top = int(np.argmax(smoothed))
        score = float(smoothed[top])
        if not self._keyword[top] or score < self.cfg.threshold:
            self._streak_label, self._streak = -1, 0
            return None
        self._streak = self._streak + 1 if top == self._streak_label else 1
        self._streak_label = top
        if self._streak < self.cfg.patience or t - self._last_t < self.cfg.refractory_s:
            return None
        self._last_t = t
        return self.labels[top], score


def hop_probabilities(model: Any, frames: np.ndarray, hop_frames: int, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """What a Listener computes, for a whole stream at once: (probabilities (hops, labels), the stream time
    at the end of each hop's window), given every frame of the stream from its start (FrameStream). The
    windows are the Listener's to the sample (the stream starts after a second of digital silence), but
    the model runs on batches of them: for benchmarks that sweep detector settings over long streams."""
    f: FeatureConfig = model.feature_config
    silence = log_mel(np.zeros(f.clip_samples, np.float32), f)
    padded = np.concatenate([silence, frames])
    ends = np.arange(hop_frames - 1, len(frames), hop_frames)  # the last frame of each hop
    width = f.num_frames
    probs = np.concatenate([model.predict(np.stack([padded[e + 1 : e + 1 + width] for e in ends[i : i + batch]]))
                            for i in range(0, len(ends), batch)]) if len(ends) else np.zeros((0, len(model.labels)))
    return probs, (ends * f.frame_step + f.frame_length) / f.sample_rate


class Listener:
    """A model on the last second of a stream every hop, through a Detector. ``model`` is a KwsModel."""

    def __init__(self, model: Any, cfg: DetectorConfig) -> None:
        self.model, self.cfg = model, cfg
        feat: FeatureConfig = model.feature_config
        hop = cfg.hop_ms * feat.sample_rate // 1000
        if hop % feat.frame_step:
            raise ValueError(f"the hop ({cfg.hop_ms} ms) must be a whole number of feature frames "
                             f"({1000 * feat.frame_step // feat.sample_rate} ms)")
        self.hop_frames = hop // feat.frame_step
        self.rate = feat.sample_rate
        self.frames = FrameStream(feat, group=self.hop_frames)
        # The window starts as the features of digital silence: the stream is heard from its first hop.
        silence = log_mel(np.zeros(feat.clip_samples, np.float32), feat)
        self.window = silence.copy()
        self.detector = Detector(model.labels, cfg)
        self._since_hop = 0
        self.windows = 0  # model invocations so far
        self._audio = np.zeros(0, np.float32)  # the last samples pushed, enough for the current window
        self._audio_start = 0  # the stream index of self._audio[0]
        self._settling: _Settling | None = None

    @property
    def seconds(self) -> float:
        """Stream time of the last complete frame's end."""
        f = self.model.feature_config
        return ((self.frames.frames - 1) * f.frame_step + f.frame_length) / f.sample_rate if self.frames.frames else 0.0

    def push(self, samples: np.ndarray) -> list[Detection]:
        """Detections that the audio (float32 in [-1, 1], at the model's rate) completes."""
        found: list[Detection] = []
        samples = np.asarray(samples, np.float32)
        self._audio = np.concatenate([self._audio, samples])
        new = self.frames.push(samples)
        i = 0
        while i < len(new):
            take = min(len(new) - i, self.hop_frames - self._since_hop)
            self.window = np.concatenate([self.window[take:], new[i : i + take]])
            self._since_hop += take
            i += take
            if self._since_hop == self.hop_frames:
                self._since_hop = 0
                f = self.model.feature_config
                t = ((self.frames.frames - len(new) + i - 1) * f.frame_step + f.frame_length) / f.sample_rate
                probs = self.model.predict(self.window)[0]
                self.windows += 1
                settled = self._settle(probs, t)
                if settled is not None:
                    found.append(settled)
                hit = self.detector.update(probs, t)
                if hit is not None:
                    sure = hit[1] >= self.cfg.sure
                    if sure or not self.cfg.settle:
                        found.append(Detection(t, hit[0], hit[1], sure, self._window_audio(t), t))
                    else:
                        found.extend(self.flush())  # a refractory period shorter than settle
                        k = self.model.labels.index(hit[0])
                        self._settling = _Settling(t, hit[0], k, hit[1], float(probs[k]), t, self.cfg.settle)
        keep = 2 * self.model.feature_config.clip_samples
        if len(self._audio) > keep:
            self._audio_start += len(self._audio) - keep
            self._audio = self._audio[-keep:]
        return found

    def flush(self) -> list[Detection]:
        """At the end of the input: the detection still settling, if any, with the best window it had."""
        return [self._hand_over(self.seconds)] if self._settling else []

    def _settle(self, probs: np.ndarray, t: float) -> Detection | None:
        s = self._settling
        if s is None:
            return None
        if probs[s.index] > s.best:
            s.best, s.best_t = float(probs[s.index]), t
        s.hops_left -= 1
        return None if s.hops_left else self._hand_over(t)

    def _hand_over(self, t: float) -> Detection:
        """The settling detection, carrying its best window, handed over at stream time t."""
        s, self._settling = self._settling, None
        assert s is not None
        return Detection(s.t, s.label, s.score, False, self._window_audio(s.best_t), t)

    def _window_audio(self, t: float) -> np.ndarray:
        """The second of audio that ends at stream time t (zeros before the stream started)."""
        f = self.model.feature_config
        end = round(t * f.sample_rate) - self._audio_start
        start = end - f.clip_samples
        clip = self._audio[max(0, start) : max(0, end)]
        return np.concatenate([np.zeros(f.clip_samples - len(clip), np.float32), clip])
