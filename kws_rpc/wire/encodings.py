"""The catalogue of encodings: how a clip is put into a request, and what each route puts on the wire.

Vocabulary (docs/architecture.md): the *transport* is rest, grpc or mqtt; the *encoding* is how a clip is
put into a request (``wav``, ``pcm``, a log-mel tensor ``mfcc-*``, or, over REST, the spec's SenML body with
a PCM or IMA ADPCM WAV); a *route* is a transport and an encoding (``rest-spec``, ``grpc-mfcc-q5z``);
*payload bytes* are the request body's size, the cost the cascade budgets. Clients (edge.transports), the
calibration and the benches all build requests here, so the bytes measured are the bytes sent.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kws_rpc.audio.features import FeatureConfig, log_mel
from kws_rpc.audio.wav import encode_wav, pad_or_trim
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.wire.codec import audio_to_proto, config_to_proto, tensor_to_proto
from kws_rpc.wire.senml import spec_body_for_wav, spec_bytes

SAMPLE_RATE = 16000
# Feature payloads: (dtype, quantization levels, encoding). i8z is i8 made smaller losslessly. q5z keeps
# 32 levels (5 bits) per value and q4z 16 (4 bits); both deflate far below i8. Measured on the 7,200
# train + val clips, big's answer changes on 3 clips with 32 levels and on 9 with 16 (float: 0 by
# definition), while a 16-level request is about a third smaller, so a budget buys more asks.
_TENSOR_PAYLOADS = {
    "mfcc-f32": (pb.FLOAT32, 256, pb.TENSOR_ENCODING_RAW),
    "mfcc-f16": (pb.FLOAT16, 256, pb.TENSOR_ENCODING_RAW),
    "mfcc-i8": (pb.INT8, 256, pb.TENSOR_ENCODING_RAW),
    "mfcc-i8z": (pb.INT8, 256, pb.TENSOR_ENCODING_DIFF2_ZLIB),
    "mfcc-q5z": (pb.INT8, 32, pb.TENSOR_ENCODING_DIFF2_ZLIB),
    "mfcc-q4z": (pb.INT8, 16, pb.TENSOR_ENCODING_DIFF2_ZLIB),
    # transform-coded (2-D DCT, range coder; kws_rpc.wire.featcodec): about 300 B per request
    "mfcc-dct": (pb.FLOAT32, 256, pb.TENSOR_ENCODING_DCT_RC),
}
PAYLOADS = ("wav", "pcm", *_TENSOR_PAYLOADS)
# mfcc-dct requests never exceed this: about 3 in 10 clips would take more at the default step (train/val:
# 293 B mean, 383 max), and get coarser steps instead (278 B mean; big's answer on val changes on 2 clips
# of 800 either way).
DCT_MAX_REQUEST_BYTES = 300



def spec_body(audio: np.ndarray, device: str, timestamp: int | None = None, wav_codec: str = "pcm16") -> dict[str, Any]:
    """The reference SenML+JSON request: the 1 s clip as a base64 16 kHz WAV file, 16-bit PCM as the
    reference sends it, or 4-bit IMA ADPCM (``wav_codec="ima-adpcm"``, a quarter of the bytes; kws
    servers read both, the course's reference service only PCM)."""
    return spec_body_for_wav(encode_wav(audio, SAMPLE_RATE, wav_codec), device, timestamp)


def request_id(position: int) -> str:
    """A gRPC request's id: the clip's position in the run. It is unique within the run and costs a few
    bytes (the clip's path would add about 20 B to every request); the JSON report lists clips in order."""
    return str(position)


def build_request(audio: np.ndarray, payload: str, clip_id: str, config: FeatureConfig | None) -> pb.PredictRequest:
    """A PredictRequest carrying the clip as ``payload``; MFCC payloads need the big model's config."""
    if payload in ("wav", "pcm"):
        return pb.PredictRequest(request_id=clip_id, audio=audio_to_proto(audio, SAMPLE_RATE, wav=payload == "wav"))
    if payload not in _TENSOR_PAYLOADS:
        raise ValueError(f"unknown payload {payload!r}; choose from {PAYLOADS}")
    if config is None:
        raise ValueError("MFCC payloads need the server model's feature config")
    return features_request(log_mel(pad_or_trim(np.asarray(audio, np.float32), config.clip_samples), config),
                            payload, clip_id, config)


def features_request(feats: np.ndarray, payload: str, clip_id: str, config: FeatureConfig) -> pb.PredictRequest:
    """A PredictRequest carrying features already computed with ``config`` as the tensor ``payload``."""
    if payload not in _TENSOR_PAYLOADS:
        raise ValueError(f"{payload!r} is not a feature payload; choose from {list(_TENSOR_PAYLOADS)}")
    request = pb.PredictRequest(request_id=clip_id, features=pb.Features(
        tensor=tensor_to_proto(feats, *_TENSOR_PAYLOADS[payload]), config=config_to_proto(config)))
    excess = request.ByteSize() - DCT_MAX_REQUEST_BYTES
    if payload == "mfcc-dct" and excess > 0:  # a loud, busy clip: coarser steps until the request fits
        request.features.tensor.CopyFrom(tensor_to_proto(feats, *_TENSOR_PAYLOADS[payload],
                                                         max_data_bytes=len(request.features.tensor.data) - excess))
    return request


# REST routes: the spec body with its WAV as 16-bit PCM (the reference's) or as 4-bit IMA ADPCM.
REST_ROUTES = {"rest-spec": "pcm16", "rest-adpcm": "ima-adpcm"}
ROUTES = (*REST_ROUTES, *(f"grpc-{p}" for p in PAYLOADS))


def request_for(route: str, audio: np.ndarray, clip_id: str, device: str,
                config: FeatureConfig | None) -> pb.PredictRequest | dict[str, Any]:
    """What one route ("rest-spec", "rest-adpcm" or "grpc-<encoding>") puts on the wire for a clip."""
    if route in REST_ROUTES:
        return spec_body(audio, device, wav_codec=REST_ROUTES[route])
    if not route.startswith("grpc-"):
        raise ValueError(f"unknown route {route!r}; choose from {ROUTES}")
    return build_request(audio, route[len("grpc-"):], clip_id, config)


def payload_bytes(request: pb.PredictRequest | dict[str, Any]) -> int:
    """Bytes of one request: the reference rule for the spec body, the serialized size for gRPC."""
    return spec_bytes(request) if isinstance(request, dict) else request.ByteSize()
