"""A corpus of bad inputs, built from one good clip: what an attacker or a broken client sends.

Four kinds, by where they can be sent:
- ``requests(...)``: PredictRequests (bad WAV headers, PCM, tensors, names), sent over gRPC unary and
  streaming, as proto3 JSON to ``/v1/predict`` and on the MQTT clips topic;
- ``raw_messages()``: bytes that are no PredictRequest (gRPC with identity serializers, MQTT);
- ``spec_bodies(...)``: bodies for ``PUT /`` (SenML), each bad WAV of ``requests`` included;
- ``v1_bodies()``: bodies for ``POST /v1/predict`` that are not proto3 JSON of a PredictRequest.
A few inputs are odd but valid by design (a clip shorter than one output sample is zero-padded, as every
short clip is): ``ACCEPTED`` names them. Every other input must be refused with a 4xx / INVALID_ARGUMENT /
NOT_FOUND and a message; nothing may be a 5xx, INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import base64
import json
import random
import struct
import zlib

import numpy as np

from kws_rpc.audio.features import FeatureConfig
from kws_rpc.audio.wav import decode_wav, encode_wav
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.wire import featcodec
from kws_rpc.wire.codec import config_to_proto, tensor_to_proto

ACCEPTED = {"wav 1 frame at 48 kHz", "wav 1 frame at 8 kHz", "pcm16 2 bytes at 48 kHz", "pcm16 2 bytes at 8 kHz"}
HUGE_NAME = "m" * (512 << 10)  # fits every transport's message limit, and no error or log line


def _wav_with(wav: bytes, offset: int, fmt: str, value: int) -> bytes:
    b = bytearray(wav)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def _riff(*chunks: tuple[bytes, bytes], size: int | None = None) -> bytes:
    body = b"WAVE" + b"".join(cid + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1)
                              for cid, data in chunks)
    return b"RIFF" + struct.pack("<I", len(body) if size is None else size) + body


def _fmt(tag: int = 1, channels: int = 1, rate: int = 16000, bits: int = 16, byte_rate: int | None = None,
         align: int | None = None) -> bytes:
    align = channels * bits // 8 if align is None else align
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align if byte_rate is None else byte_rate, align, bits)


def bad_wavs(wav: bytes) -> dict[str, bytes]:
    """WAV files with lying or unsupported headers (``wav`` is a good 16 kHz mono 16-bit file, 44-byte
    header: fmt at 12, data at 36)."""
    audio, rate = decode_wav(wav)
    pcm = wav[44:]
    return {
        "wav empty": b"",
        "wav text": b"hello world, this is not a wav file",
        "wav RIFF only": b"RIFF\x04\x00\x00\x00WAVE",
        "wav RIFF not WAVE": b"RIFF" + wav[4:8] + b"AVI " + wav[12:],
        "wav RIFF size beyond the file": _wav_with(wav, 4, "<I", len(wav) + 1000),
        "wav RIFF size short of the file": _wav_with(wav, 4, "<I", len(wav) - 100),
        "wav RIFF size 0": _wav_with(wav, 4, "<I", 0),
        "wav RIFF size 0xFFFFFFFF": _wav_with(wav, 4, "<I", 0xFFFFFFFF),
        "wav trailing garbage": wav + b"garbage!",
        "wav fmt size lies": _wav_with(wav, 16, "<I", 10**6),
        "wav fmt size 8": _riff((b"fmt ", _fmt()[:8]), (b"data", pcm)),
        "wav data size lies": _wav_with(wav, 40, "<I", 10**9),
        "wav data size odd": _riff((b"fmt ", _fmt()), (b"data", pcm[:101])),
        "wav data before fmt": _riff((b"data", pcm), (b"fmt ", _fmt())),
        "wav no data chunk": _riff((b"fmt ", _fmt()), (b"LIST", b"INFOjunk")),
        "wav no fmt chunk": _riff((b"data", pcm)),
        "wav truncated chunk header": b"RIFF" + struct.pack("<I", 32) + b"WAVEfmt " + struct.pack("<I", 16) + _fmt()
                                      + b"data",
        "wav stereo": _riff((b"fmt ", _fmt(channels=2)), (b"data", pcm)),
        "wav 8 bit": _riff((b"fmt ", _fmt(bits=8)), (b"data", pcm)),
        "wav 24 bit": _riff((b"fmt ", _fmt(bits=24)), (b"data", pcm[: len(pcm) // 3 * 3])),
        "wav float32 format": _riff((b"fmt ", _fmt(tag=3, bits=32)), (b"data", pcm)),
        "wav extensible format": _riff((b"fmt ", _fmt(tag=0xFFFE)), (b"data", pcm)),
        "wav sample rate 0": _wav_with(wav, 24, "<I", 0),
        "wav sample rate 1": _riff((b"fmt ", _fmt(rate=1)), (b"data", pcm[:2])),
        "wav sample rate 4 kHz": encode_wav(audio[::4], rate // 4),
        "wav sample rate 96 kHz": _riff((b"fmt ", _fmt(rate=96000)), (b"data", pcm)),
        "wav sample rate 2**32-1": _riff((b"fmt ", _fmt(rate=0xFFFFFFFF, byte_rate=0xFFFFFFFE)), (b"data", pcm)),
        "wav byte rate inconsistent": _riff((b"fmt ", _fmt(byte_rate=12345)), (b"data", pcm)),
        "wav block align inconsistent": _riff((b"fmt ", _fmt(align=4)), (b"data", pcm)),
        "wav no samples": _riff((b"fmt ", _fmt()), (b"data", b"")),
        "wav 3 s long": encode_wav(np.tile(audio, 3), rate),
        "wav 1 frame at 48 kHz": encode_wav(audio[:1], 48000),
        "wav 1 frame at 8 kHz": encode_wav(audio[:1], 8000),
        **bad_adpcm_wavs(audio, rate),
    }


def bad_adpcm_wavs(audio: np.ndarray, rate: int) -> dict[str, bytes]:
    """IMA ADPCM WAV files (kws_rpc.audio.adpcm) that lie about their layout. A good one has fmt (20 bytes) at
    12, fact at 40 (sample count at 48), data at 52 and block 0's header at 60 (index byte 62)."""
    good = encode_wav(audio, rate, "ima-adpcm")
    fmt20, data = good[20:40], good[60:]
    fmt16 = fmt20[:16]
    return {
        "adpcm fmt without samples per block": _riff((b"fmt ", fmt16), (b"data", data)),
        "adpcm samples per block wrong": _wav_with(good, 38, "<H", 1000),
        "adpcm block align 4": _riff((b"fmt ", fmt20[:12] + struct.pack("<HHHH", 4, 4, 2, 1)), (b"data", data)),
        "adpcm stereo": _wav_with(good, 22, "<H", 2),
        "adpcm 3 bit": _wav_with(good, 34, "<H", 3),
        "adpcm fact beyond the data": _wav_with(good, 48, "<I", 10**6),
        "adpcm fact 0": _wav_with(good, 48, "<I", 0),
        "adpcm step index 200": _wav_with(good, 62, "<B", 200),
        "adpcm reserved byte set": _wav_with(good, 63, "<B", 7),
        "adpcm data of 3 bytes": _riff((b"fmt ", fmt20), (b"data", data[:3])),
        "adpcm no samples": _riff((b"fmt ", fmt20), (b"data", b"")),
        "adpcm 3 s long": encode_wav(np.tile(audio, 3), rate, "ima-adpcm"),
        "adpcm sample rate 4 kHz": encode_wav(audio[::4], rate // 4, "ima-adpcm"),
    }


def _tensor(**fields: object) -> pb.PredictRequest:
    return pb.PredictRequest(request_id="t", features=pb.Features(tensor=pb.Tensor(**fields)))  # type: ignore[arg-type]


def bad_tensors(cfg: FeatureConfig) -> dict[str, pb.PredictRequest]:
    frames, coeffs = cfg.shape
    n = frames * coeffs
    zeros = np.zeros(cfg.shape, np.float32)
    f32 = dict(dtype=pb.FLOAT32, shape=[frames, coeffs])
    smooth = zeros + np.arange(coeffs, dtype=np.float32)
    z = tensor_to_proto(smooth, pb.INT8, 32, pb.TENSOR_ENCODING_DIFF2_ZLIB)
    zlib_like = dict(dtype=pb.INT8, shape=list(z.shape), scale=z.scale, zero_point=z.zero_point,
                     encoding=pb.TENSOR_ENCODING_DIFF2_ZLIB)
    other = config_to_proto(cfg)
    other.num_mel_bins += 1
    nonsense = config_to_proto(cfg)
    nonsense.sample_rate = 0
    ok = tensor_to_proto(zeros)
    dct = tensor_to_proto(smooth, pb.FLOAT32, encoding=pb.TENSOR_ENCODING_DCT_RC)
    huge_dc = np.zeros(cfg.shape, np.int64)
    huge_dc[0, 0] = 2**20 - 1  # the largest coefficient, at the coarsest step: features of about 1e5
    dct_like = {"dtype": pb.FLOAT32, "shape": [frames, coeffs], "encoding": pb.TENSOR_ENCODING_DCT_RC}

    def filled(value: float, dtype: str = "<f4") -> bytes:
        return np.full(cfg.shape, value, dtype).tobytes()

    return {
        "tensor missing": pb.PredictRequest(request_id="t", features=pb.Features(config=config_to_proto(cfg))),
        "tensor dtype unset": _tensor(shape=[frames, coeffs], data=b"\0" * n),
        "tensor dtype 99": _tensor(dtype=99, shape=[frames, coeffs], data=b"\0" * n),
        "tensor encoding 7": _tensor(**f32, data=filled(0), encoding=7),
        "tensor DIFF2_ZLIB on FLOAT32": _tensor(**f32, data=filled(0), encoding=pb.TENSOR_ENCODING_DIFF2_ZLIB),
        "tensor shape empty": _tensor(dtype=pb.FLOAT32, data=b"\0" * 4),
        "tensor shape with a 0": _tensor(dtype=pb.FLOAT32, shape=[frames, 0], data=b""),
        "tensor rank 5": _tensor(dtype=pb.FLOAT32, shape=[1, 1, 1, frames, coeffs], data=filled(0)),
        "tensor shape 4 x 2**32-1 (int64 product wraps)": _tensor(dtype=pb.FLOAT32, shape=[2**32 - 1] * 4,
                                                                  data=b"\0" * 4),
        "tensor shape 4 x 2**16 (int64 product 0)": _tensor(dtype=pb.FLOAT32, shape=[2**16] * 4, data=b"\0" * 4),
        "tensor shape 2 x 2**32-1 (int64 product negative)": _tensor(dtype=pb.FLOAT32, shape=[2**32 - 1] * 2, data=b""),
        "tensor 4 M elements": _tensor(dtype=pb.INT8, shape=[2000, 2000], data=b"\0" * 16, scale=1.0),
        "tensor data short": _tensor(**f32, data=filled(0)[:-4]),
        "tensor data long": _tensor(**f32, data=filled(0) + b"\0" * 4),
        "tensor shape of another model": pb.PredictRequest(features=pb.Features(tensor=tensor_to_proto(zeros[:, :5]))),
        "tensor batch of 2": pb.PredictRequest(features=pb.Features(tensor=tensor_to_proto(np.stack([zeros, zeros])))),
        "tensor NaN": _tensor(**f32, data=filled(np.nan)),
        "tensor +inf": _tensor(**f32, data=filled(np.inf)),
        "tensor 3e38 everywhere": _tensor(**f32, data=filled(3e38)),
        "tensor -1e6 everywhere": _tensor(**f32, data=filled(-1e6)),
        "tensor float16 inf": _tensor(dtype=pb.FLOAT16, shape=[frames, coeffs], data=filled(np.inf, "<f2")),
        "tensor float16 NaN": _tensor(dtype=pb.FLOAT16, shape=[frames, coeffs], data=filled(np.nan, "<f2")),
        "tensor int8 scale 0": _tensor(dtype=pb.INT8, shape=[frames, coeffs], data=b"\1" * n, scale=0.0),
        "tensor int8 scale negative": _tensor(dtype=pb.INT8, shape=[frames, coeffs], data=b"\1" * n, scale=-1.0),
        "tensor int8 scale NaN": _tensor(dtype=pb.INT8, shape=[frames, coeffs], data=b"\1" * n, scale=float("nan")),
        "tensor int8 scale inf": _tensor(dtype=pb.INT8, shape=[frames, coeffs], data=b"\1" * n, scale=float("inf")),
        "tensor int8 scale 3e38 (overflows float32)": _tensor(dtype=pb.INT8, shape=[frames, coeffs], data=b"\x7f" * n,
                                                              scale=3e38),
        "tensor int8 zero point 2**31-1": _tensor(dtype=pb.INT8, shape=[frames, coeffs], data=b"\1" * n, scale=1.0,
                                                  zero_point=2**31 - 1),
        "tensor zlib garbage": _tensor(**zlib_like, data=b"not zlib at all"),
        "tensor zlib truncated": _tensor(**zlib_like, data=z.data[: len(z.data) // 2]),
        "tensor zlib too few values": _tensor(**zlib_like, data=zlib.compress(b"\0" * 100)),
        "tensor zlib bomb": _tensor(**zlib_like, data=zlib.compress(b"\0" * 50_000_000)),
        "tensor DCT_RC on INT8": _tensor(**{**dct_like, "dtype": pb.INT8}, data=dct.data, scale=1.0),
        "tensor DCT_RC no data": _tensor(**dct_like, data=b""),
        "tensor DCT_RC step index 0": _tensor(**dct_like, data=b"\0" + dct.data[1:]),
        "tensor DCT_RC count past the shape": _tensor(**dct_like, data=b"\x01" + b"\xff" * 400),
        "tensor DCT_RC truncated": _tensor(**dct_like, data=dct.data[: len(dct.data) // 2]),
        "tensor DCT_RC trailing bytes": _tensor(**dct_like, data=dct.data + b"\x55" * 100),
        "tensor DCT_RC 3-D": _tensor(**{**dct_like, "shape": [1, frames, coeffs]}, data=dct.data),
        "tensor DCT_RC 2**32-1 x 2": _tensor(**{**dct_like, "shape": [2**32 - 1, 2]}, data=dct.data),
        "tensor DCT_RC features beyond 1e4": _tensor(**dct_like, data=featcodec.encode_codes(huge_dc, 255)),
        "features config of another model": pb.PredictRequest(features=pb.Features(tensor=ok, config=other)),
        "features config sample rate 0": pb.PredictRequest(features=pb.Features(tensor=ok, config=nonsense)),
    }


def requests(wav: bytes, cfg: FeatureConfig) -> dict[str, pb.PredictRequest]:
    """Every bad PredictRequest (each bad WAV among them), with a request id (MQTT clips need one)."""
    audio, rate = decode_wav(wav)
    pcm = (np.round(audio * 32767)).astype("<i2").tobytes()
    out = {name: pb.PredictRequest(audio=pb.Audio(wav=w)) for name, w in bad_wavs(wav).items()}
    out.update({
        "pcm16 without sample rate": pb.PredictRequest(audio=pb.Audio(pcm16=pcm)),
        "pcm16 odd byte count": pb.PredictRequest(audio=pb.Audio(sample_rate=16000, pcm16=pcm[:101])),
        "pcm16 empty": pb.PredictRequest(audio=pb.Audio(sample_rate=16000, pcm16=b"")),
        "pcm16 sample rate 1": pb.PredictRequest(audio=pb.Audio(sample_rate=1, pcm16=pcm[:2])),
        "pcm16 sample rate 100 kHz": pb.PredictRequest(audio=pb.Audio(sample_rate=100_000, pcm16=pcm)),
        "pcm16 sample rate 2**32-1": pb.PredictRequest(audio=pb.Audio(sample_rate=2**32 - 1, pcm16=pcm)),
        "pcm16 3 s long": pb.PredictRequest(audio=pb.Audio(sample_rate=16000, pcm16=pcm * 3)),
        "pcm16 2 bytes at 48 kHz": pb.PredictRequest(audio=pb.Audio(sample_rate=48000, pcm16=pcm[:2])),
        "pcm16 2 bytes at 8 kHz": pb.PredictRequest(audio=pb.Audio(sample_rate=8000, pcm16=pcm[:2])),
        "audio with no data": pb.PredictRequest(audio=pb.Audio(sample_rate=16000)),
        "no input": pb.PredictRequest(),
        "unknown model": pb.PredictRequest(model="nope", audio=pb.Audio(wav=wav)),
        "model name of 512 kB": pb.PredictRequest(model=HUGE_NAME, audio=pb.Audio(wav=wav)),
        "model name with a newline and a fake log line": pb.PredictRequest(
            model="big\n2026-01-01 00:00:00 ERROR kws_rpc.serving.server: fake", audio=pb.Audio(wav=wav)),
        "request id of 100 kB": pb.PredictRequest(request_id="r" * 100_000, audio=pb.Audio(wav=wav)),
    })
    out.update(bad_tensors(cfg))
    for i, (name, req) in enumerate(out.items()):
        if not req.request_id:
            req.request_id = f"bad-{i}"
    return out


def raw_messages() -> dict[str, bytes]:
    """Bytes that do not parse as a PredictRequest (or parse to one with no input)."""
    rng = random.Random(10)
    return {
        "raw truncated length-delimited field": b"\x0a\xff\xff",
        "raw invalid wire type": b"\x0f",
        "raw field number 0": b"\x00",
        "raw invalid UTF-8 in request_id": b"\x0a\x01\xff",
        "raw varint of 20 bytes": b"\xff" * 20,
        "raw audio message truncated": b"\x1a\x80\x80\x80\x80\x10",
        "raw 100000 nested groups": b"\x0b" * 100_000,
        "raw unknown fields only": b"\x2a\x05\x0a\x03abc",
        "raw 1000 random bytes": bytes(rng.randrange(256) for _ in range(1000)),
    }


def _senml(vd: object, **base: object) -> bytes:
    doc = {"bn": "dev", "bt": 1700000000, **base, "e": [{"n": "audio", "u": "/", "t": 0, "vd": vd}]}
    return json.dumps(doc).encode()


def spec_bodies(wav: bytes) -> dict[str, tuple[bytes, dict[str, str], str]]:
    """(body, headers, query) for ``PUT /``: bad SenML, and every bad WAV inside a good SenML body."""
    vd = base64.b64encode(wav).decode()
    good = json.loads(_senml(vd))
    rest = json.dumps(good["e"])
    out: dict[str, tuple[bytes, dict[str, str], str]] = {f"senml {k}": (_senml(base64.b64encode(w).decode()), {}, "")
                                                         for k, w in bad_wavs(wav).items()}
    bodies = {
        "senml empty body": b"",
        "senml whitespace": b"  \n\t ",
        "senml not JSON": b"{not json",
        "senml invalid UTF-8": b"\xff\xfe{",
        "senml 200000 open brackets": b"[" * 200_000,
        "senml 100000 nested objects": b'{"a":' * 100_000,
        "senml bt of 5000 digits": b'{"bn":"d","bt":' + b"9" * 5000 + b',"e":' + rest.encode() + b"}",
        "senml bt NaN": b'{"bn":"d","bt":NaN,"e":' + rest.encode() + b"}",
        "senml bt Infinity": b'{"bn":"d","bt":Infinity,"e":' + rest.encode() + b"}",
        "senml bt 1e999": b'{"bn":"d","bt":1e999,"e":' + rest.encode() + b"}",
        "senml bt 1e300": _senml(vd, bt=1e300),
        "senml bt a string": _senml(vd, bt="now"),
        "senml bt true": _senml(vd, bt=True),
        "senml bn lone surrogate": b'{"bn":"\\ud800","bt":1,"e":' + rest.encode() + b"}",
        "senml bn a number": _senml(vd, bn=42),
        "senml bn null": _senml(vd, bn=None),
        "senml bn of 100 kB": _senml(vd, bn="d" * 100_000),
        "senml e not a list": json.dumps({"bn": "d", "e": "audio"}).encode(),
        "senml e empty": json.dumps({"bn": "d", "e": []}).encode(),
        "senml no audio record": json.dumps({"bn": "d", "e": [{"n": "temperature", "v": 21}]}).encode(),
        "senml 100000 empty records": json.dumps({"bn": "d", "e": [{}] * 100_000}).encode(),
        "senml vd a number": _senml(12345),
        "senml vd not base64": _senml("***not base64***"),
        "senml vd lone surrogate": _senml("\ud800"),
        "senml top-level number": b"123",
        "senml top-level string": b'"audio"',
        "senml top-level null": b"null",
        "senml body of 2 MB": _senml("A" * (2 << 20)),
    }
    out.update({k: (v, {}, "") for k, v in bodies.items()})
    out["senml model query of 10 kB"] = (_senml(vd), {}, "model=" + "m" * 10_000)
    out["senml X-Request-Id of 10 kB"] = (_senml(vd), {"X-Request-Id": "r" * 10_000}, "")
    return out


def v1_bodies() -> dict[str, bytes]:
    """Bodies for ``POST /v1/predict`` that are no proto3 JSON PredictRequest."""
    t = {"dtype": "FLOAT32", "shape": [49, 40], "data": base64.b64encode(b"\0" * 7840).decode()}
    return {
        "v1 not JSON": b"nope",
        "v1 invalid UTF-8": b"\xff\xfe{",
        "v1 a JSON array": b"[1, 2]",
        "v1 unknown field": b'{"unknownField": 1}',
        "v1 200000 open brackets": b"[" * 200_000,
        "v1 nested 40 deep": b'{"audio":' * 40 + b"{}" + b"}" * 40,
        "v1 wav not base64": b'{"audio": {"wav": "%%%"}}',
        "v1 tensor data not base64": json.dumps({"features": {"tensor": {**t, "data": "ab$d"}}}).encode(),
        "v1 shape a string": json.dumps({"features": {"tensor": {**t, "shape": "49x40"}}}).encode(),
        "v1 shape negative": json.dumps({"features": {"tensor": {**t, "shape": [-49, 40]}}}).encode(),
        "v1 shape 2**40": json.dumps({"features": {"tensor": {**t, "shape": [2**40, 40]}}}).encode(),
        "v1 dtype FLOAT64": json.dumps({"features": {"tensor": {**t, "dtype": "FLOAT64"}}}).encode(),
        "v1 dtype 99": json.dumps({"features": {"tensor": {**t, "dtype": 99}}}).encode(),
        "v1 sampleRate a word": b'{"audio": {"sampleRate": "abc", "pcm16": "AAAA"}}',
        "v1 sampleRate of 500 digits": b'{"audio": {"sampleRate": ' + b"9" * 500 + b', "pcm16": "AAAA"}}',
        "v1 sampleRate NaN": b'{"audio": {"sampleRate": NaN, "pcm16": "AAAA"}}',
        "v1 requestId lone surrogate": b'{"requestId": "\\ud800", "audio": {"pcm16": "AAAA", "sampleRate": 16000}}',
        "v1 model lone surrogate": b'{"model": "\\udfff", "audio": {"pcm16": "AAAA", "sampleRate": 16000}}',
        "v1 audio null": b'{"audio": null}',
        "v1 wav a number": b'{"audio": {"wav": 123}}',
        "v1 both audio and features": json.dumps({"audio": {"wav": ""}, "features": {"tensor": t}}).encode(),
        "v1 body of 2 MB": json.dumps({"audio": {"wav": "A" * (2 << 20)}}).encode(),
    }
