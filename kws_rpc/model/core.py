"""The transport-free inference core: audio or features in, probabilities out.

The gRPC servicer, the REST gateway and the MQTT worker are thin adapters onto this class; it knows no
proto, HTTP or MQTT type. With a ``MicroBatcher`` concurrent calls share model invocations; without one
each call runs the model directly.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
from collections.abc import Mapping

import numpy as np

from kws_rpc.audio.wav import MAX_RATE, MIN_RATE
from kws_rpc.errors import DeadlineExceeded, InvalidInput, UnknownModel, quote
from kws_rpc.model.batching import MicroBatcher
from kws_rpc.model.card import ModelCard
from kws_rpc.model.kws_model import KwsModel

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Result:
    probabilities: np.ndarray  # (labels,) float32
    card: ModelCard


class InferenceCore:
    """Holds the loaded models; validates inputs; runs inference.

    ``timeout_s`` bounds how long one call waits for its batch (queue and model); past it the call is
    DeadlineExceeded rather than a thread held for as long as the queue takes."""

    def __init__(self, models: Mapping[str, KwsModel], default: str, batcher: MicroBatcher | None = None,
                 timeout_s: float | None = None) -> None:
        if default not in models:
            raise ValueError(f"default model {default!r} is not among {sorted(models)}")
        self.models = dict(models)
        self.default = default
        self.batcher = batcher
        self.timeout_s = timeout_s

    def close(self) -> None:
        """Finishes queued batched work; later batched calls fail with Unavailable."""
        if self.batcher is not None:
            self.batcher.close()

    def model(self, name: str = "") -> KwsModel:
        try:
            return self.models[name or self.default]
        except KeyError:
            raise UnknownModel(f"unknown model {quote(name)}; this server has {sorted(self.models)}") from None

    def predict_audio(self, audio: np.ndarray, sample_rate: int, model: str = "") -> Result:
        m = self.model(model)
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 1 or x.size == 0:
            raise InvalidInput("audio must be one non-empty mono clip")
        if not np.all(np.isfinite(x)):
            raise InvalidInput("audio contains NaN or infinite samples")
        if not MIN_RATE <= sample_rate <= MAX_RATE:
            raise InvalidInput(f"sample rate {sample_rate} Hz is not supported: send {MIN_RATE // 1000}-"
                               f"{MAX_RATE // 1000} kHz (the model uses {m.feature_config.sample_rate} Hz)")
        if self.batcher is None:
            return self.predict_features(m.features(x, sample_rate), model)
        with self.batcher.incoming():  # a batch due meanwhile waits for this clip's features
            future = self.batcher.submit(m, m.features(x, sample_rate))
        return self._result(self._wait(future), m)

    def predict_features(self, feats: np.ndarray, model: str = "") -> Result:
        m = self.model(model)
        if np.ndim(feats) == 3 and np.shape(feats)[0] != 1:
            raise InvalidInput(f"one clip per request: got features of shape {np.shape(feats)}")
        if self.batcher is not None:
            return self._result(self._wait(self.batcher.submit(m, feats)), m)
        return self._result(m.predict(feats), m)

    def _wait(self, future: concurrent.futures.Future) -> np.ndarray:
        try:
            return future.result(self.timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DeadlineExceeded(f"no answer within the server's {self.timeout_s:g} s deadline: the "
                                   "inference queue is too long; retry with backoff") from None

    @staticmethod
    def _result(probs: np.ndarray, m: KwsModel) -> Result:
        """Never an answer with NaN: a model pushed outside its range says so instead."""
        if not np.all(np.isfinite(probs[0])):
            raise InvalidInput(f"model {m.name} gave non-finite probabilities for these features: they are "
                               "far outside the range it was trained on")
        return Result(probs[0], m.card)
