"""A shipped model ready to run: card-checked loading, features, batched inference. No transports here."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kws_rpc.audio.features import FeatureConfig, log_mel, resample
from kws_rpc.audio.wav import pad_or_trim
from kws_rpc.errors import InvalidInput, ModelMismatch
from kws_rpc.model.card import ModelCard, load_card
from kws_rpc.model.interpreter import make_interpreter

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
MAX_INTERPRETERS = 4  # per model and batch size: invocations running at once in one process

# Log-mel and MFCC features of audio in [-1, 1] stay within about +-130; far larger values only make a
# float model overflow (3e38 everywhere gave NaN probabilities and the label "yes").
MAX_FEATURE_ABS = 1e4


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def softmax_margin(probs: np.ndarray) -> np.ndarray:
    """Score margin: top-1 minus top-2 probability, per row."""
    top2 = np.sort(probs, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


class KwsModel:
    """One .tflite model and its card. Thread-safe: interpreters are not, so each invocation borrows one
    from a bounded pool (per batch size) and returns it. The bound keeps memory flat however many
    threads call in (a gRPC server has 64): with one core per process, more than a few interpreters
    never run at once anyway."""

    def __init__(self, path: str | Path, num_threads: int = 1, max_interpreters: int = MAX_INTERPRETERS) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model {self.path} not found (shipped models live in models/)")
        self._content = self.path.read_bytes()
        self.card: ModelCard = load_card(self.path, self._content)
        self.num_threads = num_threads
        self.max_interpreters = max_interpreters
        self._pools: dict[int, queue.LifoQueue] = {}
        self._created: dict[int, int] = {}
        self._pool_lock = threading.Lock()
        probe = make_interpreter(self._content, num_threads)
        inp, out = probe.get_input_details()[0], probe.get_output_details()[0]
        self.input_dtype = np.dtype(inp["dtype"])
        self._in_quant = inp["quantization"]
        self._out_quant = out["quantization"]
        self._out_dtype = np.dtype(out["dtype"])
        if list(inp["shape"][1:]) != list(self.card.feature.shape):
            raise ModelMismatch(f"{self.path}: input {inp['shape']} does not match card {self.card.feature.shape}")
        if inp["shape"][0] == 1:  # the probe is the pool's first interpreter for single clips, not garbage
            self._pools[1] = queue.LifoQueue()
            self._pools[1].put((probe, inp["index"], out["index"]))
            self._created[1] = 1

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def labels(self) -> list[str]:
        return self.card.labels

    @property
    def feature_config(self) -> FeatureConfig:
        return self.card.feature

    def _new_interpreter(self, batch: int) -> tuple[Any, int, int]:
        interp = make_interpreter(self._content, self.num_threads)
        idx = interp.get_input_details()[0]["index"]
        if interp.get_input_details()[0]["shape"][0] != batch:
            interp.resize_tensor_input(idx, [batch, *self.card.feature.shape])
            interp.allocate_tensors()
        return interp, idx, interp.get_output_details()[0]["index"]

    @contextlib.contextmanager
    def _interpreter(self, batch: int) -> Iterator[tuple[Any, int, int]]:
        """Borrows an interpreter for ``batch`` rows (with its input and output tensor indices)."""
        with self._pool_lock:
            pool = self._pools.setdefault(batch, queue.LifoQueue())
        try:
            item = pool.get_nowait()
        except queue.Empty:
            with self._pool_lock:
                make = self._created.get(batch, 0) < self.max_interpreters
                if make:
                    self._created[batch] = self._created.get(batch, 0) + 1
            item = self._new_interpreter(batch) if make else pool.get()
        try:
            yield item
        finally:
            pool.put(item)

    def features(self, audio: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """Features of a clip or batch as this model's card says; audio is resampled if needed."""
        cfg = self.card.feature
        x = np.asarray(audio, dtype=np.float32)
        if sample_rate is not None and sample_rate != cfg.sample_rate:
            x = resample(x, sample_rate, cfg.sample_rate)
        if x.shape[-1] != cfg.clip_samples:
            x = pad_or_trim(x, cfg.clip_samples)
        return log_mel(x, cfg)

    def check_features(self, feats: np.ndarray) -> np.ndarray:
        x = np.asarray(feats, dtype=np.float32)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or tuple(x.shape[1:]) != self.card.feature.shape:
            raise ModelMismatch(
                f"features of shape {tuple(np.shape(feats))} do not fit model {self.name}: "
                f"it takes (batch,) + {self.card.feature.shape} as its card's feature config says"
            )
        if not np.all(np.isfinite(x)):
            raise InvalidInput("features contain NaN or infinite values")
        if x.size and float(np.abs(x).max()) > MAX_FEATURE_ABS:
            raise InvalidInput(f"features reach {float(np.abs(x).max()):.3g}; the model's features of audio in "
                               f"[-1, 1] stay within +-{MAX_FEATURE_ABS:g} (compute them as its card says)")
        return x

    def predict(self, feats: np.ndarray) -> np.ndarray:
        """Probabilities (batch, labels) for features (batch, frames, coeffs) or one (frames, coeffs)."""
        x = self.check_features(feats)
        n = x.shape[0]
        out = np.empty((n, len(self.labels)), dtype=np.float32)
        start = 0
        while start < n:
            bucket = next((b for b in BATCH_BUCKETS if b >= n - start), BATCH_BUCKETS[-1])
            chunk = x[start : start + bucket]
            out[start : start + len(chunk)] = self._invoke(chunk, bucket)
            start += len(chunk)
        return out

    def _invoke(self, chunk: np.ndarray, bucket: int) -> np.ndarray:
        n = len(chunk)
        if n < bucket:
            chunk = np.concatenate([chunk, np.zeros((bucket - len(chunk), *chunk.shape[1:]), np.float32)])
        x = self.quantize_input(chunk)
        with self._interpreter(bucket) as (interp, in_index, out_index):
            interp.set_tensor(in_index, x)
            interp.invoke()
            y = interp.get_tensor(out_index)
        if self._out_dtype != np.float32:
            scale, zero = self._out_quant
            y = (y.astype(np.float32) - zero) * scale
        if self.card.output == "logits":
            y = softmax(y)
        return y[:n]

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        if self.input_dtype == np.float32:
            return x.astype(np.float32, copy=False)
        scale, zero = self._in_quant
        info = np.iinfo(self.input_dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(self.input_dtype)

    def predict_audio(self, audio: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        return self.predict(self.features(audio, sample_rate))
