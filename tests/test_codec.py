"""Tensor encodings of kws.v1: raw and DIFF2_ZLIB round trips, quantization levels."""

from __future__ import annotations

import numpy as np
import pytest

from kws.v1 import kws_pb2 as pb
from kws_rpc.codec import diff2_zlib_decode, diff2_zlib_encode, quantize_int8, tensor_from_proto, tensor_to_proto
from kws_rpc.errors import InvalidInput

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
