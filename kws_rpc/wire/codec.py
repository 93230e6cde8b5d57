"""Conversions between kws.v1 proto messages and numpy / core types. Transport code (servicer, gateway,
MQTT, edge) uses these; the core and the model runtime never see a proto."""

from __future__ import annotations

import base64
import binascii
import math
import zlib

import numpy as np
from google.protobuf.message import DecodeError

from kws_rpc.audio.features import FeatureConfig
from kws_rpc.audio.wav import decode_wav, encode_wav, float_to_pcm16, pcm16_to_float
from kws_rpc.errors import InvalidInput, ModelMismatch, PayloadTooLarge
from kws_rpc.model.card import ModelCard
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.wire import featcodec

_NP_DTYPE = {pb.FLOAT32: np.dtype("<f4"), pb.FLOAT16: np.dtype("<f2"), pb.INT8: np.dtype("i1")}
MAX_TENSOR_ELEMENTS = 1 << 20
MAX_TENSOR_RANK = 4  # (batch, frames, coefficients) needs 3
MAX_PCM_SECONDS = 2.0


def quantize_int8(x: np.ndarray, levels: int = 256) -> tuple[np.ndarray, float, int]:
    """Affine int8 codes spanning x's range with ``levels`` values (2..256): codes -128 .. levels-129."""
    if not 2 <= levels <= 256:
        raise ValueError(f"levels must be in 2..256, got {levels}")
    lo, hi = float(x.min()), float(x.max())
    scale = max(hi - lo, 1e-8) / (levels - 1)
    zero = int(round(-128 - lo / scale))
    q = np.clip(np.round(x / scale + zero), -128, levels - 129).astype(np.int8)
    return q, scale, zero


def _grid(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0] if a.ndim else 1, -1)


def diff2_zlib_encode(q: np.ndarray) -> bytes:
    """TENSOR_ENCODING_DIFF2_ZLIB (see kws.proto): second differences of the codes mod 256, deflated.
    Both deflate strategies are tried and the shorter kept (any inflater reads either)."""
    g = _grid(q.view(np.uint8)).astype(np.int32)
    r = (np.diff(np.diff(g, axis=0, prepend=0), axis=1, prepend=0) % 256).astype(np.uint8).tobytes()
    streams = []
    for strategy in (zlib.Z_DEFAULT_STRATEGY, zlib.Z_HUFFMAN_ONLY):
        c = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS, 9, strategy)
        streams.append(c.compress(r) + c.flush())
    return min(streams, key=len)


def diff2_zlib_decode(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of diff2_zlib_encode; never inflates more than the shape needs (no zip bombs)."""
    count = math.prod(shape)  # Python ints: no int64 wrap-around
    d = zlib.decompressobj()
    try:
        raw = d.decompress(data, count + 1)
    except zlib.error as e:
        raise InvalidInput(f"tensor data is not a valid zlib stream: {e}") from None
    if len(raw) > count or d.unconsumed_tail:
        raise InvalidInput(f"tensor data inflates to more than the {count} bytes shape {list(shape)} needs")
    if len(raw) < count or not d.eof:
        raise InvalidInput(f"tensor data inflates to {len(raw)} bytes (stream {'complete' if d.eof else 'truncated'}); "
                           f"shape {list(shape)} needs {count}")
    r = _grid(np.frombuffer(raw, np.uint8).reshape(shape)).astype(np.int64)
    g = (np.cumsum(np.cumsum(r, axis=0), axis=1) % 256).astype(np.uint8)
    return g.reshape(shape).view(np.int8)


def tensor_to_proto(x: np.ndarray, dtype: int = pb.FLOAT32, levels: int = 256,
                    encoding: int = pb.TENSOR_ENCODING_RAW, max_data_bytes: int | None = None) -> pb.Tensor:
    """Encodes a float array. INT8 uses one affine scale for the whole tensor, with ``levels`` codes
    (fewer levels: coarser, and smaller once DIFF2_ZLIB-encoded). DCT_RC (FLOAT32, 2-D) is the
    transform-coded payload of ``kws_rpc.wire.featcodec``; ``levels`` is then unused, and ``max_data_bytes``
    makes its steps coarser until the data fits."""
    x = np.asarray(x, dtype=np.float32)
    t = pb.Tensor(dtype=dtype, shape=list(x.shape), encoding=encoding)
    if encoding == pb.TENSOR_ENCODING_DCT_RC:
        if dtype != pb.FLOAT32:
            raise ValueError("DCT_RC tensors are FLOAT32")
        t.data = featcodec.encode(x, max_bytes=max_data_bytes)
        return t
    if encoding != pb.TENSOR_ENCODING_RAW and dtype != pb.INT8:
        raise ValueError("only INT8 tensors can be DIFF2_ZLIB-encoded")
    if dtype == pb.INT8:
        q, t.scale, t.zero_point = quantize_int8(x, levels)
        t.data = diff2_zlib_encode(q) if encoding == pb.TENSOR_ENCODING_DIFF2_ZLIB else q.tobytes()
    elif dtype in _NP_DTYPE:
        t.data = x.astype(_NP_DTYPE[dtype]).tobytes()
    else:
        raise ValueError(f"unsupported dtype {dtype}")
    return t


def tensor_from_proto(t: pb.Tensor) -> np.ndarray:
    """Decodes to float32, validating dtype, encoding, shape, byte count and finiteness."""
    if t.dtype not in _NP_DTYPE:
        raise InvalidInput(f"tensor dtype {pb.DType.Name(t.dtype) if t.dtype in pb.DType.values() else t.dtype} "
                           "is not supported: use FLOAT32, FLOAT16 or INT8")
    if t.encoding not in (pb.TENSOR_ENCODING_RAW, pb.TENSOR_ENCODING_DIFF2_ZLIB, pb.TENSOR_ENCODING_DCT_RC):
        raise InvalidInput(f"tensor encoding {t.encoding} is not supported: use RAW, DIFF2_ZLIB or DCT_RC")
    if t.encoding == pb.TENSOR_ENCODING_DIFF2_ZLIB and t.dtype != pb.INT8:
        raise InvalidInput("DIFF2_ZLIB encoding applies to INT8 tensors only")
    if t.encoding == pb.TENSOR_ENCODING_DCT_RC and t.dtype != pb.FLOAT32:
        raise InvalidInput("DCT_RC encoding applies to FLOAT32 tensors only")
    if len(t.shape) > MAX_TENSOR_RANK:
        raise InvalidInput(f"tensor has {len(t.shape)} dimensions; at most {MAX_TENSOR_RANK} are accepted")
    shape = tuple(int(d) for d in t.shape)
    if not shape or any(d == 0 for d in shape):
        raise InvalidInput(f"tensor shape {list(shape)} is empty")
    count = math.prod(shape)  # Python ints: a product of uint32s never wraps to 0 or below
    if count > MAX_TENSOR_ELEMENTS:
        raise PayloadTooLarge(f"tensor of {count} elements exceeds the limit of {MAX_TENSOR_ELEMENTS}")
    dt = _NP_DTYPE[t.dtype]
    if t.encoding == pb.TENSOR_ENCODING_DIFF2_ZLIB:
        x = diff2_zlib_decode(t.data, shape)
    elif t.encoding == pb.TENSOR_ENCODING_DCT_RC:
        x = featcodec.decode(t.data, shape)
    elif len(t.data) != count * dt.itemsize:
        raise InvalidInput(f"tensor data has {len(t.data)} bytes; shape {list(shape)} of "
                           f"{pb.DType.Name(t.dtype)} needs {count * dt.itemsize}")
    else:
        x = np.frombuffer(t.data, dtype=dt).reshape(shape)
    if t.dtype == pb.INT8:
        if not np.isfinite(t.scale) or t.scale <= 0:
            raise InvalidInput("INT8 tensor needs a positive finite scale")
        with np.errstate(over="ignore"):  # a huge scale overflows to inf, refused below
            x = (x.astype(np.float32) - np.float32(t.zero_point)) * np.float32(t.scale)
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise InvalidInput("tensor contains NaN or infinite values" + (" (scale * (q - zero_point) overflows "
                           "float32)" if t.dtype == pb.INT8 else ""))
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


# The bytes fields of a PredictRequest in proto3 JSON, as (path, field) pairs.
_BYTES_FIELDS = ((("audio",), "wav"), (("audio",), "pcm16"), (("features", "tensor"), "data"))


def check_base64_fields(doc: object) -> None:
    """protobuf's JSON parser decodes bad base64 leniently (to fewer or no bytes); this refuses it with
    the field's name. proto3 JSON accepts the standard and URL-safe alphabets, padded or not."""
    for path, field in _BYTES_FIELDS:
        node = doc
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        value = node.get(field) if isinstance(node, dict) else None
        if not isinstance(value, str):
            continue
        text = value.replace("-", "+").replace("_", "/")
        try:
            base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError) as e:
            raise InvalidInput(f"{'.'.join((*path, field))} is not valid base64 ({e})") from None


def parse(message_type: type, data: bytes):
    """Parses a serialized proto, turning decode errors into InvalidInput."""
    msg = message_type()
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError) as e:
        raise InvalidInput(f"malformed {message_type.DESCRIPTOR.full_name}: {e}") from None
    return msg
