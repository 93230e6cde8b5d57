"""Clip payloads of cooperative inference, and the reference SenML+JSON message they are compared with.

When every live worker takes the same feature config, the client computes features once and sends them
as a FLOAT16 tensor (49x40 log-mel: 3920 bytes + ~60 of framing) instead of 32000 bytes of PCM, so each
worker skips the STFT and the broker moves 8x less. Otherwise it sends the audio and each worker
computes its own features.
"""

from __future__ import annotations

import base64
import functools
import json

import numpy as np

from kws_rpc.audio.features import FeatureConfig
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.wire.codec import audio_to_proto, config_from_proto, config_to_proto, tensor_to_proto


def shared_config(statuses: list[pb.WorkerStatus]) -> FeatureConfig | None:
    """The feature config every worker takes, or None if they differ (or there are no workers)."""
    wires = {s.model.feature_config.SerializeToString(deterministic=True) for s in statuses}
    if len(wires) != 1 or not statuses:
        return None
    return config_from_proto(statuses[0].model.feature_config)


@functools.lru_cache(maxsize=16)
def _config_wire(config: FeatureConfig) -> pb.FeatureConfig:
    return config_to_proto(config)  # one per config, not one per clip (dataclasses.asdict is slow)


def features_message(request_id: str, feats: np.ndarray, config: FeatureConfig,
                     dtype: int = pb.FLOAT16) -> bytes:
    """A clip's message on the clips topic: a serialized PredictRequest carrying its features."""
    return pb.PredictRequest(request_id=request_id, features=pb.Features(
        tensor=tensor_to_proto(feats, dtype), config=_config_wire(config))).SerializeToString()


def audio_message(request_id: str, audio: np.ndarray, sample_rate: int) -> bytes:
    """A clip's message on the clips topic: a serialized PredictRequest carrying its PCM samples."""
    return pb.PredictRequest(request_id=request_id, audio=audio_to_proto(audio, sample_rate)).SerializeToString()


def senml_reference(request_id: str, feats: np.ndarray, time_s: float = 1.7e9) -> bytes:
    """The same clip as the reference SenML+JSON message: the float32 tensor base64'd in a "vd" record,
    its shape and the request id as string records (what a JSON-over-MQTT design would send)."""
    x = np.asarray(feats, dtype="<f4")
    records = [
        {"bn": f"urn:kws:clip:{request_id}:", "bt": time_s, "n": "shape", "vs": "x".join(map(str, x.shape))},
        {"n": "features", "vd": base64.b64encode(x.tobytes()).decode("ascii")},
    ]
    return json.dumps(records, separators=(",", ":")).encode()


def senml_prediction_reference(request_id: str, probs: np.ndarray, model: str, worker_id: str,
                               labels: list[str], time_s: float = 1.7e9) -> bytes:
    """A vote as SenML+JSON: one numeric record per label, plus the worker and model as strings."""
    recs: list[dict] = [{"bn": f"urn:kws:vote:{request_id}:", "bt": time_s, "n": "worker", "vs": worker_id},
                        {"n": "model", "vs": model}]
    recs += [{"n": f"p/{label}", "v": round(float(p), 7)} for label, p in zip(labels, probs)]
    return json.dumps(recs, separators=(",", ":")).encode()
