"""The transport-free handlers of kws: wire messages in, wire messages out, domain errors raised.

One data plane (KServe's shape): the gRPC servicer, the co-hosted REST gateway, the MQTT worker and the
edge's local answers (calibration, payload table) all call these functions on an ``InferenceCore``; none
of them dispatches a ``PredictRequest`` itself. This module imports no gRPC, HTTP or MQTT code.
"""

from __future__ import annotations

import functools
from typing import Any

from kws_rpc.audio.features import FeatureConfig
from kws_rpc.errors import InvalidInput, quote
from kws_rpc.model.core import InferenceCore, Result
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.wire import codec
from kws_rpc.wire.senml import wav_from_senml

MAX_REQUEST_ID_CHARS = 256  # request ids are echoed in every reply


@functools.lru_cache(maxsize=32)
def _config_wire(config: FeatureConfig) -> bytes:
    return codec.config_to_proto(config).SerializeToString(deterministic=True)


def _check_config(given: pb.Features, expected: FeatureConfig) -> None:
    """The request's feature config, when sent, must be the model's; the common case (the same bytes)
    costs one comparison instead of a proto built per request."""
    if given.HasField("config") and given.config.SerializeToString(deterministic=True) != _config_wire(expected):
        codec.check_config(given.config, expected)  # raises ModelMismatch with the details


def infer(core: InferenceCore, req: pb.PredictRequest) -> Result:
    """Validates a PredictRequest and runs it: audio (WAV or PCM) or features, on the model it names."""
    if len(req.request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidInput(f"request_id {quote(req.request_id, 40)} is longer than {MAX_REQUEST_ID_CHARS} characters")
    kind = req.WhichOneof("input")
    if kind == "audio":
        audio, rate = codec.audio_from_proto(req.audio)
        return core.predict_audio(audio, rate, req.model)
    if kind == "features":
        _check_config(req.features, core.model(req.model).feature_config)
        if not req.features.HasField("tensor"):
            raise InvalidInput("features have no tensor: set features.tensor")
        return core.predict_features(codec.tensor_from_proto(req.features.tensor), req.model)
    raise InvalidInput("the request has no input: set audio (wav or pcm16) or features")


def predict(core: InferenceCore, req: pb.PredictRequest, worker_id: str = "") -> pb.PredictResponse:
    result = infer(core, req)
    return pb.PredictResponse(request_id=req.request_id, worker_id=worker_id,
                              prediction=codec.prediction_to_proto(result.probabilities, result.card))


def metadata(core: InferenceCore, req: pb.ModelMetadataRequest) -> pb.ModelMetadata:
    return codec.metadata_to_proto(core.model(req.model).card)


def spec_request(body: bytes, model: str = "", request_id: str = "") -> tuple[pb.PredictRequest, dict[str, Any]]:
    """The reference client's body (SenML+JSON, base64 WAV) as a PredictRequest, and the base record
    fields (bn, bt) its reply echoes."""
    wav, base = wav_from_senml(body)
    return pb.PredictRequest(request_id=request_id, model=model, audio=pb.Audio(wav=wav)), base
