"""The catalogue of encodings: how a clip is put into a request, and what each route puts on the wire.

Vocabulary (docs/architecture.md): the *transport* is rest, grpc or mqtt; the *encoding* is how a clip is
put into a request (``wav``, ``pcm``, a log-mel tensor ``logmel-*``, or, over REST, the spec's SenML body with
a PCM or IMA ADPCM WAV); a *route* is a transport and an encoding (``rest-spec``, ``grpc-logmel-q5z``);
*payload bytes* are the request body's size, the cost the cascade budgets. Clients (edge.transports), the
calibration and the benches all build requests here, so the bytes measured are the bytes sent.

The log-mel encodings were first named ``mfcc-*``: those names are accepted everywhere as aliases
(``encoding``, ``route``), and files written with them (models/cascade.json) are read through
``legacy_route``.
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
# Log-mel encodings: (dtype, quantization levels, tensor encoding). i8z is i8 made smaller losslessly. q5z keeps
# 32 levels (5 bits) per value and q4z 16 (4 bits); both deflate far below i8. Measured on the 7,200
# train + val clips, big's answer changes on 3 clips with 32 levels and on 9 with 16 (float: 0 by
# definition), while a 16-level request is about a third smaller, so a budget buys more asks.
TENSOR_ENCODINGS = {
    "logmel-f32": (pb.FLOAT32, 256, pb.TENSOR_ENCODING_RAW),
    "logmel-f16": (pb.FLOAT16, 256, pb.TENSOR_ENCODING_RAW),
    "logmel-i8": (pb.INT8, 256, pb.TENSOR_ENCODING_RAW),
    "logmel-i8z": (pb.INT8, 256, pb.TENSOR_ENCODING_DIFF2_ZLIB),
    "logmel-q5z": (pb.INT8, 32, pb.TENSOR_ENCODING_DIFF2_ZLIB),
    "logmel-q4z": (pb.INT8, 16, pb.TENSOR_ENCODING_DIFF2_ZLIB),
    # transform-coded (2-D DCT, range coder; kws_rpc.wire.featcodec): about 300 B per request
    "logmel-dct": (pb.FLOAT32, 256, pb.TENSOR_ENCODING_DCT_RC),
}
ENCODINGS = ("wav", "pcm", *TENSOR_ENCODINGS)
# The first names of the log-mel encodings, still accepted: mfcc-q5z is logmel-q5z.
ALIASES = {f"mfcc-{name.split('-', 1)[1]}": name for name in TENSOR_ENCODINGS}
ENCODING_CHOICES = (*ENCODINGS, *ALIASES)  # what a command line accepts
# logmel-dct requests never exceed this: about 3 in 10 clips would take more at the default step (train/val:
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


def encoding(name: str) -> str:
    """The encoding's name (an alias ``mfcc-*`` gives its ``logmel-*``); ValueError if there is none."""
    name = ALIASES.get(name, name)
    if name not in ENCODINGS:
        raise ValueError(f"unknown encoding {name!r}; choose from {ENCODINGS}")
    return name


def is_logmel(name: str) -> bool:
    """A log-mel encoding (its features are computed on the client, with the server model's config)."""
    return ALIASES.get(name, name) in TENSOR_ENCODINGS


def build_request(audio: np.ndarray, encoding_: str, clip_id: str, config: FeatureConfig | None) -> pb.PredictRequest:
    """A PredictRequest carrying the clip in an encoding; log-mel encodings need the big model's config."""
    name = encoding(encoding_)
    if name in ("wav", "pcm"):
        return pb.PredictRequest(request_id=clip_id, audio=audio_to_proto(audio, SAMPLE_RATE, wav=name == "wav"))
    if config is None:
        raise ValueError("log-mel encodings need the server model's feature config")
    return features_request(log_mel(pad_or_trim(np.asarray(audio, np.float32), config.clip_samples), config),
                            name, clip_id, config)


def features_request(feats: np.ndarray, encoding_: str, clip_id: str, config: FeatureConfig) -> pb.PredictRequest:
    """A PredictRequest carrying features already computed with ``config``, in a log-mel encoding."""
    name = ALIASES.get(encoding_, encoding_)
    if name not in TENSOR_ENCODINGS:
        raise ValueError(f"{encoding_!r} is not a log-mel encoding; choose from {list(TENSOR_ENCODINGS)}")
    request = pb.PredictRequest(request_id=clip_id, features=pb.Features(
        tensor=tensor_to_proto(feats, *TENSOR_ENCODINGS[name]), config=config_to_proto(config)))
    excess = request.ByteSize() - DCT_MAX_REQUEST_BYTES
    if name == "logmel-dct" and excess > 0:  # a loud, busy clip: coarser steps until the request fits
        request.features.tensor.CopyFrom(tensor_to_proto(feats, *TENSOR_ENCODINGS[name],
                                                         max_data_bytes=len(request.features.tensor.data) - excess))
    return request


# REST routes: the spec body with its WAV as 16-bit PCM (the reference's) or as 4-bit IMA ADPCM.
REST_ROUTES = {"rest-spec": "pcm16", "rest-adpcm": "ima-adpcm"}
ROUTES = (*REST_ROUTES, *(f"grpc-{e}" for e in ENCODINGS))
ROUTE_CHOICES = (*ROUTES, *(f"grpc-{a}" for a in ALIASES))  # what a command line accepts


def route(name: str) -> str:
    """The route's name (``grpc-mfcc-q5z`` gives ``grpc-logmel-q5z``); ValueError if there is none."""
    if name in REST_ROUTES:
        return name
    if not name.startswith("grpc-"):
        raise ValueError(f"unknown route {name!r}; choose from {ROUTES}")
    return f"grpc-{encoding(name[len('grpc-'):])}"


def legacy_route(name: str) -> str:
    """The name a route had in files written before the log-mel encodings were renamed (grpc-mfcc-*)."""
    legacy = {v: k for k, v in ALIASES.items()}
    return f"grpc-{legacy[name[5:]]}" if name.startswith("grpc-") and name[5:] in legacy else name


def request_for(route_: str, audio: np.ndarray, clip_id: str, device: str,
                config: FeatureConfig | None) -> pb.PredictRequest | dict[str, Any]:
    """What one route ("rest-spec", "rest-adpcm" or "grpc-<encoding>") puts on the wire for a clip."""
    name = route(route_)
    if name in REST_ROUTES:
        return spec_body(audio, device, wav_codec=REST_ROUTES[name])
    return build_request(audio, name[len("grpc-"):], clip_id, config)


def payload_bytes(request: pb.PredictRequest | dict[str, Any]) -> int:
    """Bytes of one request: the reference rule for the spec body, the serialized size for gRPC."""
    return spec_bytes(request) if isinstance(request, dict) else request.ByteSize()
