"""The transport-free inference core: audio or features in, probabilities out.

The gRPC servicer, the REST gateway and the MQTT worker are thin adapters onto this class; it knows no
proto, HTTP or MQTT type. With a ``MicroBatcher`` concurrent calls share model invocations; without one
each call runs the model directly.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np

from kws_rpc.card import ModelCard
from kws_rpc.batching import MicroBatcher
from kws_rpc.errors import InvalidInput, UnknownModel
from kws_rpc.model import KwsModel

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Result:
    probabilities: np.ndarray  # (labels,) float32
    card: ModelCard


class InferenceCore:
    """Holds the loaded models; validates inputs; runs inference."""

    def __init__(self, models: Mapping[str, KwsModel], default: str, batcher: MicroBatcher | None = None) -> None:
        if default not in models:
            raise ValueError(f"default model {default!r} is not among {sorted(models)}")
        self.models = dict(models)
        self.default = default
        self.batcher = batcher

    def close(self) -> None:
        """Finishes queued batched work; later batched calls fail with Unavailable."""
        if self.batcher is not None:
            self.batcher.close()

    def model(self, name: str = "") -> KwsModel:
        try:
            return self.models[name or self.default]
        except KeyError:
            raise UnknownModel(f"unknown model {name!r}; this server has {sorted(self.models)}") from None

    def predict_audio(self, audio: np.ndarray, sample_rate: int, model: str = "") -> Result:
        m = self.model(model)
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 1 or x.size == 0:
            raise InvalidInput("audio must be one non-empty mono clip")
        if not np.all(np.isfinite(x)):
            raise InvalidInput("audio contains NaN or infinite samples")
        if not 8000 <= sample_rate <= 48000:
            raise InvalidInput(f"sample rate {sample_rate} Hz is not supported: send 8-48 kHz "
                               f"(the model uses {m.feature_config.sample_rate} Hz)")
        if self.batcher is None:
            return self.predict_features(m.features(x, sample_rate), model)
        with self.batcher.incoming():  # a batch due meanwhile waits for this clip's features
            future = self.batcher.submit(m, m.features(x, sample_rate))
        return Result(future.result()[0], m.card)

    def predict_features(self, feats: np.ndarray, model: str = "") -> Result:
        m = self.model(model)
        if np.ndim(feats) == 3 and np.shape(feats)[0] != 1:
            raise InvalidInput(f"one clip per request: got features of shape {np.shape(feats)}")
        if self.batcher is not None:
            return Result(self.batcher.predict(m, feats)[0], m.card)
        return Result(m.predict(feats)[0], m.card)
