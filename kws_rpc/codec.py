"""Conversions between kws.v1 proto messages and numpy / core types. Transport code (servicer, gateway,
MQTT, edge) uses these; the core and the model runtime never see a proto."""

from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError

from kws.v1 import kws_pb2 as pb
from kws_rpc.audio import decode_wav, encode_wav, float_to_pcm16, pcm16_to_float
from kws_rpc.card import ModelCard
from kws_rpc.errors import InvalidInput, ModelMismatch, PayloadTooLarge
from kws_rpc.features import FeatureConfig

_NP_DTYPE = {pb.FLOAT32: np.dtype("<f4"), pb.FLOAT16: np.dtype("<f2"), pb.INT8: np.dtype("i1")}
MAX_TENSOR_ELEMENTS = 1 << 20
MAX_PCM_SECONDS = 2.0


def tensor_to_proto(x: np.ndarray, dtype: int = pb.FLOAT32) -> pb.Tensor:
    """Encodes a float array; INT8 uses one symmetric-range affine scale for the whole tensor."""
    x = np.asarray(x, dtype=np.float32)
    t = pb.Tensor(dtype=dtype, shape=list(x.shape))
    if dtype == pb.INT8:
        lo, hi = float(x.min()), float(x.max())
        scale = max(hi - lo, 1e-8) / 255.0
        zero = int(round(-128 - lo / scale))
        q = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
        t.scale, t.zero_point, t.data = scale, zero, q.tobytes()
    elif dtype in _NP_DTYPE:
        t.data = x.astype(_NP_DTYPE[dtype]).tobytes()
    else:
        raise ValueError(f"unsupported dtype {dtype}")
    return t


def tensor_from_proto(t: pb.Tensor) -> np.ndarray:
    """Decodes to float32, validating dtype, shape, byte count and finiteness."""
    if t.dtype not in _NP_DTYPE:
        raise InvalidInput(f"tensor dtype {pb.DType.Name(t.dtype) if t.dtype in pb.DType.values() else t.dtype} "
                           "is not supported: use FLOAT32, FLOAT16 or INT8")
    shape = tuple(int(d) for d in t.shape)
    if not shape or any(d == 0 for d in shape):
        raise InvalidInput(f"tensor shape {list(shape)} is empty")
    count = int(np.prod(shape, dtype=np.int64))
    if count > MAX_TENSOR_ELEMENTS:
        raise PayloadTooLarge(f"tensor of {count} elements exceeds the limit of {MAX_TENSOR_ELEMENTS}")
    dt = _NP_DTYPE[t.dtype]
    if len(t.data) != count * dt.itemsize:
        raise InvalidInput(f"tensor data has {len(t.data)} bytes; shape {list(shape)} of "
                           f"{pb.DType.Name(t.dtype)} needs {count * dt.itemsize}")
    x = np.frombuffer(t.data, dtype=dt).reshape(shape)
    if t.dtype == pb.INT8:
        if not np.isfinite(t.scale) or t.scale <= 0:
            raise InvalidInput("INT8 tensor needs a positive finite scale")
        return ((x.astype(np.float32) - t.zero_point) * t.scale).astype(np.float32)
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise InvalidInput("tensor contains NaN or infinite values")
    return x


def config_to_proto(c: FeatureConfig) -> pb.FeatureConfig:
    return pb.FeatureConfig(**c.to_dict())


def config_from_proto(c: pb.FeatureConfig) -> FeatureConfig:
    from google.protobuf.json_format import MessageToDict

    try:
        return FeatureConfig.from_dict(MessageToDict(c, preserving_proto_field_name=True,
                                                     always_print_fields_with_no_presence=True))
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"bad feature config: {e}") from None


def check_config(given: pb.FeatureConfig | None, expected: FeatureConfig) -> None:
    """A request's feature config, when sent, must be the model's (compared as float32 on the wire)."""
    if given is None or given.ByteSize() == 0:
        return
    if given.SerializeToString(deterministic=True) != config_to_proto(expected).SerializeToString(deterministic=True):
        raise ModelMismatch(f"features were computed with {config_from_proto(given)}, but the model "
                            f"expects {expected}; compute them as the model's metadata says")


def audio_to_proto(audio: np.ndarray, sample_rate: int, wav: bool = False) -> pb.Audio:
    if wav:
        return pb.Audio(sample_rate=sample_rate, wav=encode_wav(audio, sample_rate))
    return pb.Audio(sample_rate=sample_rate, pcm16=float_to_pcm16(audio))


def audio_from_proto(a: pb.Audio) -> tuple[np.ndarray, int]:
    """Returns (float32 samples, sample rate); raises InvalidInput with a reason."""
    kind = a.WhichOneof("data")
    if kind == "wav":
        return decode_wav(a.wav)
    if kind == "pcm16":
        if a.sample_rate == 0:
            raise InvalidInput("pcm16 audio needs sample_rate (Hz)")
        if not a.pcm16:
            raise InvalidInput("empty audio: pcm16 has no samples")
        if len(a.pcm16) > 2 * MAX_PCM_SECONDS * a.sample_rate:
            raise PayloadTooLarge(f"clip is longer than {MAX_PCM_SECONDS} s")
        return pcm16_to_float(a.pcm16), int(a.sample_rate)
    raise InvalidInput("audio has neither wav nor pcm16 data")


def prediction_to_proto(probs: np.ndarray, card: ModelCard) -> pb.Prediction:
    p = np.asarray(probs, dtype=np.float32)
    order = np.argsort(p)
    top = int(order[-1])
    return pb.Prediction(label=card.labels[top], index=top, probabilities=p.tolist(), model=card.name,
                         model_version=card.version, margin=float(p[top] - p[order[-2]]))


def metadata_to_proto(card: ModelCard) -> pb.ModelMetadata:
    return pb.ModelMetadata(name=card.name, version=card.version, labels=card.labels,
                            feature_config=config_to_proto(card.feature), input_shape=list(card.feature.shape),
                            sha256=card.sha256, metrics=card.metrics, architecture=card.architecture)


def parse(message_type: type, data: bytes):
    """Parses a serialized proto, turning decode errors into InvalidInput."""
    msg = message_type()
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError) as e:
        raise InvalidInput(f"malformed {message_type.DESCRIPTOR.full_name}: {e}") from None
    return msg
