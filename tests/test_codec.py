"""Tensor encodings of kws.v1: raw and DIFF2_ZLIB round trips, quantization levels; DCT_RC (kws_rpc.wire.featcodec):
error bounds, pinned bytes, the proto's constants, malformed streams."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from kws_rpc.errors import InvalidInput
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.wire import featcodec
from kws_rpc.wire.codec import diff2_zlib_decode, diff2_zlib_encode, quantize_int8, tensor_from_proto, tensor_to_proto

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("shape", [(7,), (49, 40), (3, 5, 4), (1, 1)])
def test_diff2_zlib_is_lossless_for_any_codes(shape: tuple[int, ...]) -> None:
    q = RNG.integers(-128, 128, size=shape).astype(np.int8)  # worst case: wraps modulo 256 everywhere
    assert np.array_equal(diff2_zlib_decode(diff2_zlib_encode(q), shape), q)


@pytest.mark.parametrize("levels", [256, 32, 2])
def test_quantize_uses_exactly_the_levels_asked(levels: int) -> None:
    x = RNG.normal(size=(49, 40)).astype(np.float32)
    q, scale, zero = quantize_int8(x, levels)
    assert q.min() == -128 and q.max() == levels - 129
    assert np.abs((q.astype(np.float32) - zero) * scale - x).max() <= scale * 0.5 + 1e-5


def test_encoded_tensor_decodes_like_the_raw_one_and_is_smaller() -> None:
    # a smooth, log-mel-like surface: neighbouring values are close
    x = np.cumsum(np.cumsum(RNG.normal(size=(49, 40)), 0), 1).astype(np.float32) / 10
    for levels in (256, 32):
        raw = tensor_to_proto(x, pb.INT8, levels)
        z = tensor_to_proto(x, pb.INT8, levels, pb.TENSOR_ENCODING_DIFF2_ZLIB)
        assert np.array_equal(tensor_from_proto(z), tensor_from_proto(raw))
        assert len(z.data) < len(raw.data)


def test_bad_streams_say_what_is_wrong() -> None:
    q = RNG.integers(-128, -96, size=(49, 40)).astype(np.int8)
    data = diff2_zlib_encode(q)
    with pytest.raises(InvalidInput, match="not a valid zlib stream"):
        diff2_zlib_decode(b"\x00" * 20, q.shape)
    with pytest.raises(InvalidInput, match="truncated"):
        diff2_zlib_decode(data[:-8], q.shape)
    with pytest.raises(InvalidInput, match="more than"):
        diff2_zlib_decode(data, (49, 39))
    with pytest.raises(ValueError, match="only INT8"):
        tensor_to_proto(q.astype(np.float32), pb.FLOAT16, encoding=pb.TENSOR_ENCODING_DIFF2_ZLIB)


# --- TENSOR_ENCODING_DCT_RC (kws_rpc.wire.featcodec) --------------------------------------------------------

def _log_mel_like(seed: int) -> np.ndarray:
    """A log-mel-like 49x40 surface: a smooth envelope, a loud stretch in the middle, speckle."""
    rng = np.random.default_rng(seed)
    t = np.linspace(-1, 1, 49)[:, None]
    f = np.linspace(0, 1, 40)[None, :]
    return (-4 + 6 * np.exp(-4 * t**2) * (1 - f) + rng.normal(0, 0.5, (49, 40))).astype(np.float32)


@pytest.mark.parametrize("seed", range(5))
def test_dct_rc_round_trip_error_is_bounded_by_the_steps(seed: int) -> None:
    x = _log_mel_like(seed)
    data = featcodec.encode(x)
    y = featcodec.decode(data, x.shape)
    assert y.shape == x.shape and y.dtype == np.float32
    # orthonormal transform: the L2 error is that of the coefficients, each rounded to within step / 2
    steps = featcodec.layout(49, 40)[0] * featcodec.DEFAULT_STEP_INDEX / 64
    bound = 0.5 * np.sqrt(np.sum(steps**2))
    err = np.linalg.norm(np.maximum(x, featcodec.FLOOR) - y)
    assert err <= bound + 1e-4
    assert err < 0.65 * bound  # rounding errors spread over +-step/2 (uniform: 0.58 of the bound)
    # the decoded tensor is exactly the inverse transform of the quantized coefficients
    q = featcodec._quantize(x, featcodec.DEFAULT_STEP_INDEX)
    a_t, a_m = featcodec.dct_basis(49), featcodec.dct_basis(40)
    assert np.allclose(y, a_t.T @ (q * steps) @ a_m, atol=1e-5)


def test_dct_rc_through_the_proto_and_its_size() -> None:
    x = _log_mel_like(7)
    t = tensor_to_proto(x, pb.FLOAT32, encoding=pb.TENSOR_ENCODING_DCT_RC)
    assert t.dtype == pb.FLOAT32 and list(t.shape) == [49, 40] and t.scale == 0
    assert np.array_equal(tensor_from_proto(t), featcodec.decode(t.data, (49, 40)))
    assert 100 < len(t.data) < 400
    small = tensor_to_proto(x, pb.FLOAT32, encoding=pb.TENSOR_ENCODING_DCT_RC, max_data_bytes=150)
    assert len(small.data) <= 150 and small.data[0] > t.data[0]  # coarser step index, still decodable
    assert np.abs(tensor_from_proto(small) - x).mean() < 1.0
    with pytest.raises(ValueError, match="FLOAT32"):
        tensor_to_proto(x, pb.INT8, encoding=pb.TENSOR_ENCODING_DCT_RC)


def test_dct_rc_byte_layout_is_pinned() -> None:
    # all zero: step byte 38 (0x26), then n = 0 in 3 bits: the range coder's stream is empty
    assert featcodec.encode(np.zeros((2, 3))) == bytes([0x26])
    # one coefficient, g = 64 (step 1): q = 5 -> n = 1 (1 bit), gt1, gt2, Exp-Golomb of 2, sign
    assert featcodec.encode(np.full((1, 1), 5.0), 64).hex() == "408738"
    x = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]])
    assert featcodec._quantize(x, 38).tolist() == [[1, 4, 4], [-1, -1, 1]]
    assert featcodec.encode(x).hex() == "26c07c7e7aee30"
    assert featcodec.layout(2, 3)[1].tolist() == [0, 1, 3, 2, 4, 5]  # scan by kt*3 + kf*2, then kt
    assert featcodec.decode(bytes.fromhex("408738"), (1, 1)).item() == pytest.approx(5.0)


def test_dct_rc_constants_are_the_protos() -> None:
    proto = (Path(__file__).resolve().parent.parent / "protos" / "kws" / "v1" / "kws.proto").read_text()
    block = proto[proto.index("Contexts hold P(bit = 0)"): proto.index("TENSOR_ENCODING_DCT_RC = 2;")]
    table = block[block.index("these values"): block.index("Range coder")]
    numbers = tuple(int(v) for v in re.findall(r"\b\d+\b", table.split("1024:", 1)[1]))
    assert numbers == featcodec.INIT_PROBS
    assert len(featcodec.INIT_PROBS) == featcodec._EGS == 104
    assert (featcodec._GT1, featcodec._GT2, featcodec._SIGN, featcodec._EGP, featcodec._EGS, featcodec._COUNT,
            featcodec._CONTEXTS) == (36, 48, 60, 72, 104, 105, 118)
    assert "g = 38" in proto and "below -6 to -6" in proto and "(1 + 2 kt / (T - 1))" in proto
    assert (featcodec.DEFAULT_STEP_INDEX, featcodec.FLOOR, featcodec.ALPHA, featcodec.BETA) == (38, -6.0, 2.0, 0.0)


def _tensor_dct(data: bytes, shape: list[int], dtype: int = pb.FLOAT32) -> pb.Tensor:
    return pb.Tensor(dtype=dtype, shape=shape, data=data, encoding=pb.TENSOR_ENCODING_DCT_RC)


def test_dct_rc_malformed_streams_are_refused() -> None:
    good = featcodec.encode(_log_mel_like(3))
    cases = {
        "step index byte": b"",
        "step index byte in 1..255": b"\0" + good[1:],
        "2047 coefficients": b"\x01" + b"\xff" * 400,
        "after the end": good + b"\x55" * 30,
        "truncated": good[: len(good) // 2],
    }
    for message, data in cases.items():
        with pytest.raises(InvalidInput, match=message):
            tensor_from_proto(_tensor_dct(data, [49, 40]))
    with pytest.raises(InvalidInput, match="truncated"):
        featcodec.decode(good[:-3], (49, 40))
    # a prefix of 20 ones: no valid encoder writes it
    e = featcodec._Encoder()
    for b in (1,):  # n = 1 for a 1x1 tensor (1 bit)
        e.bit(featcodec._COUNT, b)
    e.bit(featcodec._GT1, 1)
    e.bit(featcodec._GT2, 1)
    for j in range(20):
        e.bit(featcodec._EGP + min(j, 7), 1)
    with pytest.raises(InvalidInput, match="too large"):
        featcodec.decode(bytes([64]) + e.finish(), (1, 1))
    with pytest.raises(InvalidInput, match="2-D"):
        tensor_from_proto(_tensor_dct(good, [1, 49, 40]))
    with pytest.raises(InvalidInput, match="at most 4096"):
        tensor_from_proto(_tensor_dct(good, [100, 100]))
    with pytest.raises(InvalidInput, match="FLOAT32 tensors only"):
        tensor_from_proto(_tensor_dct(good, [49, 40], pb.INT8))
    # a huge step makes huge (but finite) features: the model's range check refuses them later
    assert np.isfinite(tensor_from_proto(_tensor_dct(b"\xff" + good[1:], [49, 40]))).all()

