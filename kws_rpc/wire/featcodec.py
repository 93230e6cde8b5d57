"""TENSOR_ENCODING_DCT_RC (see kws.proto, which is the normative description): a 2-D feature tensor
(frames x coefficients, e.g. 49 x 40 log-mel) as quantized 2-D DCT coefficients, coded with an adaptive
binary range coder (the LZMA one) and no per-message tables. Numpy plus one Python loop over the coded
coefficients; the edge encodes with it and the server decodes with it.

Every constant of the format is defined here, and kws.proto states the same numbers. Longer than most
modules on purpose: the encoder and the decoder of one format stay together, so a change to one is seen
beside the other.
"""

from __future__ import annotations

import functools

import numpy as np

from kws_rpc.errors import InvalidInput

MAX_ELEMENTS = 4096  # frames x coefficients the encoding accepts (bounds the decoder's work)
FLOOR = -6.0  # encoder: features below this are raised to it before the transform (the model never notices)
ALPHA = 2.0  # quantizer step grows with the time-frequency index kt: step = delta * (1 + ALPHA * kt / (T - 1))
BETA = 0.0  # ... and with the mel-frequency index kf: * (1 + BETA * kf / (M - 1))
DEFAULT_STEP_INDEX = 38  # delta = g / 64
PROB_BITS = 11  # range coder: probabilities are 11-bit, start at 1/2, adapt with shift MOVE_BITS
MOVE_BITS = 5
MAX_TAIL = 4  # a stream ends at most 4 bytes before the decoder's last read (catches most truncations)
MAX_PREFIX = 20  # an Exp-Golomb prefix of 20 ones is invalid: magnitudes stay below 2**20

_TOP = 1 << 24
_ONE = 1 << PROB_BITS

# Contexts (each an adaptive probability): per band b = min(bit length of the scan index, 11), 3
# significance contexts (how many of the two earlier neighbours, (kt-1, kf) and (kt, kf-1), are nonzero),
# then per band gt1, gt2 and sign; Exp-Golomb prefix contexts per band group b // 3 and prefix bit
# min(j, 7); one context for every suffix bit and one per bit of the coded count.
_BANDS = 12
_SIG = 0
_GT1 = 3 * _BANDS
_GT2 = _GT1 + _BANDS
_SIGN = _GT2 + _BANDS
_EGP = _SIGN + _BANDS
_EGS = _EGP + 4 * 8
_COUNT = _EGS + 1
_CONTEXTS = _COUNT + 13
# Initial probability (of a 0 bit, in 1/2048) of every context up to _EGS, measured on the train split;
# the rest start at 1024. No command remeasures them: they are part of the format, and kws.proto lists the same numbers.
INIT_PROBS: tuple[int, ...] = (
    31, 1024, 1024, 410, 31, 1024, 123, 31, 1024, 99, 37, 47,
    116, 59, 100, 167, 102, 131, 306, 202, 234, 567, 413, 413,
    974, 738, 657, 1434, 1117, 912, 1808, 1422, 1054, 1990, 1706, 1264,
    31, 31, 34, 86, 159, 253, 470, 866, 1328, 1678, 1872, 2017,
    31, 32, 35, 78, 167, 270, 508, 914, 1238, 1418, 1682, 1986,
    143, 913, 952, 967, 1066, 1056, 1034, 1014, 1018, 1023, 1008, 1021,
    31, 50, 107, 210, 442, 816, 1280, 1797, 212, 416, 742, 1149,
    1498, 1791, 2017, 1638, 814, 1174, 1547, 1827, 1962, 2017, 1024, 1024,
    1346, 1725, 1976, 2017, 1024, 1024, 1024, 1024,
)


def _initial_probs() -> list[int]:
    p = [_ONE >> 1] * _CONTEXTS
    p[: len(INIT_PROBS)] = INIT_PROBS
    return p


@functools.lru_cache(maxsize=8)
def dct_basis(n: int) -> np.ndarray:
    """Orthonormal DCT-II, (n, n): A[k, i] = c_k cos(pi k (2i + 1) / (2n)), c_0 = sqrt(1/n), c_k = sqrt(2/n)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    a = np.cos(np.pi * k * (2 * i + 1) / (2 * n)) * np.sqrt(2.0 / n)
    a[0] /= np.sqrt(2.0)
    return a


@functools.lru_cache(maxsize=8)
def layout(frames: int, coeffs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int, int, int]]]:
    """(steps for delta = 1, scan order as flat indices, rank of each flat index, per scan position:
    (kt, kf, band, flat index))."""
    kt = np.arange(frames)[:, None]
    kf = np.arange(coeffs)[None, :]
    steps = (1.0 + ALPHA * kt / max(frames - 1, 1)) * (1.0 + BETA * kf / max(coeffs - 1, 1))
    key = (kt * coeffs + kf * frames).ravel()  # frames*coeffs*(kt/T + kf/M): both earlier neighbours come first
    order = np.lexsort((np.repeat(np.arange(frames), coeffs), key))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    scan = [(int(f) // coeffs, int(f) % coeffs, min(int(i).bit_length(), _BANDS - 1), int(f)) for i, f in enumerate(order)]
    return steps.astype(np.float64), order, rank, scan


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise InvalidInput(f"DCT_RC encodes 2-D tensors (frames x coefficients); got shape {list(shape)}")
    if shape[0] * shape[1] > MAX_ELEMENTS:
        raise InvalidInput(f"DCT_RC tensors have at most {MAX_ELEMENTS} elements; shape {list(shape)} has "
                           f"{shape[0] * shape[1]}")
    return shape[0], shape[1]


class _Encoder:
    """LZMA's range encoder (carry propagated through a cached byte and a run of 0xFF bytes)."""

    def __init__(self) -> None:
        self.low, self.range, self.cache, self.cache_size = 0, 0xFFFFFFFF, 0, 1
        self.out = bytearray()
        self.probs = _initial_probs()
        self.counts: list[list[int]] | None = None  # training: [zeros, ones] per context

    def _shift_low(self) -> None:
        low = self.low
        if low < 0xFF000000 or low >= 1 << 32:
            carry = low >> 32
            temp = self.cache
            while True:
                self.out.append((temp + carry) & 0xFF)
                temp = 0xFF
                self.cache_size -= 1
                if not self.cache_size:
                    break
            self.cache = (low >> 24) & 0xFF
        self.cache_size += 1
        self.low = (low & 0x00FFFFFF) << 8

    def bit(self, ctx: int, b: int) -> None:
        if self.counts is not None:
            self.counts[ctx][b] += 1
        p = self.probs[ctx]
        bound = (self.range >> PROB_BITS) * p
        if b:
            self.low += bound
            self.range -= bound
            self.probs[ctx] = p - (p >> MOVE_BITS)
        else:
            self.range = bound
            self.probs[ctx] = p + ((_ONE - p) >> MOVE_BITS)
        while self.range < _TOP:
            self.range <<= 8
            self._shift_low()

    def finish(self) -> bytes:
        # any value in [low, low + range) ends the stream; take the one with the most trailing zero bytes
        for shift in (32, 24, 16, 8, 0):
            v = (self.low + (1 << shift) - 1) >> shift << shift
            if v < self.low + self.range:
                self.low = v
                break
        for _ in range(5):
            self._shift_low()
        out = bytes(self.out)
        assert out[0] == 0  # LZMA's first byte is always 0: not sent
        stripped = out[1:].rstrip(b"\0")  # the decoder reads missing bytes as 0 ...
        return out[1 : 1 + max(len(stripped), len(out) - 1 - MAX_TAIL)]  # ... but at most MAX_TAIL of them


def transform(x: np.ndarray) -> np.ndarray:
    """The 2-D DCT coefficients the format quantizes: of x (frames, coeffs) raised to FLOOR."""
    frames, coeffs = x.shape
    return dct_basis(frames) @ np.maximum(x.astype(np.float64), FLOOR) @ dct_basis(coeffs).T


def inverse(c: np.ndarray) -> np.ndarray:
    """Float32 features from dequantized coefficients c (frames, coeffs): the inverse 2-D DCT."""
    frames, coeffs = c.shape
    return (dct_basis(frames).T @ c @ dct_basis(coeffs)).astype(np.float32)


def _quantize(x: np.ndarray, g: int) -> np.ndarray:
    steps = layout(*x.shape)[0]
    return np.rint(transform(x) / (steps * (g / 64.0))).astype(np.int64)


def encode_codes(q: np.ndarray, g: int, counts: list[list[int]] | None = None) -> bytes:
    """The stream for integer coefficients q (frames, coeffs) at step index g (1..255)."""
    frames, coeffs = _check_shape(q.shape)
    if not 1 <= g <= 255:
        raise ValueError(f"step index must be in 1..255, got {g}")
    _, order, _, scan = layout(frames, coeffs)
    flat = q.ravel()
    if np.abs(flat).max(initial=0) >= 1 << MAX_PREFIX:  # Exp-Golomb prefixes stay below MAX_PREFIX
        raise ValueError("coefficient too large for DCT_RC: use a coarser step index")
    seq = flat[order].tolist()
    nz = np.flatnonzero(flat[order])
    n = int(nz[-1]) + 1 if nz.size else 0
    e = _Encoder()
    e.counts = counts
    nbits = (frames * coeffs).bit_length()
    for j in range(nbits):
        e.bit(_COUNT + j, (n >> (nbits - 1 - j)) & 1)
    sig = [[0] * (coeffs + 1) for _ in range(frames + 1)]  # padded: row/col 0 are "outside"
    for i in range(n):
        kt, kf, band, _ = scan[i]
        v = seq[i]
        if i < n - 1:
            e.bit(_SIG + 3 * band + sig[kt][kf + 1] + sig[kt + 1][kf], v != 0)
        if v == 0:
            continue
        sig[kt + 1][kf + 1] = 1
        m = abs(v)
        e.bit(_GT1 + band, m > 1)
        if m > 1:
            e.bit(_GT2 + band, m > 2)
            if m > 2:
                r = m - 3 + 1  # Exp-Golomb order 0 of m - 3: prefix of k ones then a zero, k suffix bits
                k = r.bit_length() - 1
                egp = _EGP + band // 3 * 8
                for j in range(k):
                    e.bit(egp + min(j, 7), 1)
                e.bit(egp + min(k, 7), 0)
                for j in range(k - 1, -1, -1):
                    e.bit(_EGS, (r >> j) & 1)
        e.bit(_SIGN + band, v < 0)
    return bytes([g]) + e.finish()


def encode(x: np.ndarray, g: int = DEFAULT_STEP_INDEX, max_bytes: int | None = None) -> bytes:
    """Tensor data for float features x (frames, coeffs). With max_bytes, the step index grows (coarser
    steps) until the stream fits, if it can."""
    x = np.asarray(x)
    _check_shape(x.shape)
    while True:
        data = encode_codes(_quantize(x, g), g)
        if max_bytes is None or len(data) <= max_bytes or g >= 255:
            return data
        g = min(255, g + max(1, g // 8))


def decode(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 features (frames, coeffs) from tensor data; InvalidInput for any malformed stream."""
    frames, coeffs = _check_shape(tuple(shape))
    if len(data) < 1 or data[0] == 0:
        raise InvalidInput("DCT_RC data must start with a step index byte in 1..255")
    g = data[0]
    steps, _, _, scan = layout(frames, coeffs)
    src = data[1:]
    size = len(src)
    pos = 4
    code = int.from_bytes(src[:4].ljust(4, b"\0"), "big")
    rng = 0xFFFFFFFF
    probs = _initial_probs()

    def bit(ctx: int) -> int:
        nonlocal code, rng, pos
        p = probs[ctx]
        bound = (rng >> PROB_BITS) * p
        if code < bound:
            rng = bound
            probs[ctx] = p + ((_ONE - p) >> MOVE_BITS)
            b = 0
        else:
            code -= bound
            rng -= bound
            probs[ctx] = p - (p >> MOVE_BITS)
            b = 1
        while rng < _TOP:
            rng <<= 8
            code = ((code << 8) | (src[pos] if pos < size else 0)) & 0xFFFFFFFF
            pos += 1
        return b

    total = frames * coeffs
    nbits = total.bit_length()
    n = 0
    for j in range(nbits):
        n = (n << 1) | bit(_COUNT + j)
    if n > total:
        raise InvalidInput(f"DCT_RC stream codes {n} coefficients; shape {[frames, coeffs]} has {total}")
    q = np.zeros(total, dtype=np.float64)
    sig = [[0] * (coeffs + 1) for _ in range(frames + 1)]
    for i in range(n):
        kt, kf, band, f = scan[i]
        if i < n - 1 and not bit(_SIG + 3 * band + sig[kt][kf + 1] + sig[kt + 1][kf]):
            continue
        sig[kt + 1][kf + 1] = 1
        m = 1
        if bit(_GT1 + band):
            m = 2
            if bit(_GT2 + band):
                egp = _EGP + band // 3 * 8
                k = 0
                while k < MAX_PREFIX and bit(egp + min(k, 7)):
                    k += 1
                if k >= MAX_PREFIX:
                    raise InvalidInput("DCT_RC stream holds a coefficient too large to be valid")
                r = 1
                for j in range(k - 1, -1, -1):
                    r = (r << 1) | bit(_EGS)
                m = r - 1 + 3
        q[f] = -m if bit(_SIGN + band) else m
    if size > pos:
        raise InvalidInput(f"DCT_RC data has {size - pos} bytes after the end of its coded coefficients")
    if pos - size > MAX_TAIL:
        raise InvalidInput(f"DCT_RC data ends {pos - size} bytes before its coded coefficients do (at most "
                           f"{MAX_TAIL}): truncated")
    return inverse(q.reshape(frames, coeffs) * (steps * (g / 64.0)))


def train_init_probs(features: np.ndarray, g: int = DEFAULT_STEP_INDEX) -> tuple[int, ...]:
    """Initial probabilities for the trained contexts: the frequency of a 0 bit in each, over the clips
    given (the train split), in 1/2048, kept within [31, 2017] so no bit is ever nearly free."""
    counts = [[0, 0] for _ in range(_CONTEXTS)]
    for x in features:
        q = _quantize(np.asarray(x), g)
        encode_codes(q, g, counts)
    return tuple(int(min(2017, max(31, round(_ONE * (z + 1) / (z + o + 2))))) for z, o in counts[:_EGS])
