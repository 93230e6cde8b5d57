"""WAV and PCM decoding shared by the edge, the server and training (stdlib + numpy only)."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np

from kws_rpc.audio import adpcm
from kws_rpc.errors import InvalidInput, PayloadTooLarge

MAX_CLIP_SECONDS = 2.0
MIN_RATE, MAX_RATE = 8000, 48000  # sample rates the server resamples from (Hz)
WAVE_FORMAT_PCM = 1
WAVE_FORMAT_IMA_ADPCM = 0x11
WAV_CODECS = ("pcm16", "ima-adpcm")  # what encode_wav writes and decode_wav reads


def pad_or_trim(audio: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad at the end (like the reference) or cut to ``length`` samples."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.shape[-1] >= length:
        return audio[..., :length]
    pad = [(0, 0)] * (audio.ndim - 1) + [(0, length - audio.shape[-1])]
    return np.pad(audio, pad)


def pcm16_to_float(pcm: bytes | np.ndarray) -> np.ndarray:
    """Little-endian int16 PCM to float32 in [-1, 1)."""
    if isinstance(pcm, (bytes, bytearray, memoryview)):
        if len(pcm) % 2:
            raise InvalidInput("16-bit PCM must have an even number of bytes")
        pcm = np.frombuffer(pcm, dtype="<i2")
    return np.asarray(pcm, dtype=np.float32) / 32768.0


def float_to_pcm16(audio: np.ndarray) -> bytes:
    x = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 32767 / 32768)
    return (np.round(x * 32768.0)).astype("<i2").tobytes()


def decode_wav(data: bytes, max_seconds: float = MAX_CLIP_SECONDS) -> tuple[np.ndarray, int]:
    """Decode a mono WAV file: 16-bit PCM, or IMA ADPCM (4 bits a sample, kws_rpc.audio.adpcm). Returns
    (float32 samples, sample rate).

    The RIFF structure is checked before anything is read from it: the RIFF size is the file's, every
    chunk fits in it, the fmt chunk is consistent (block align, byte rate) and the rate is one the
    server supports. A file that lies about a size is InvalidInput, never a short or a huge read."""
    if not data:
        raise InvalidInput("empty audio: expected the bytes of a 16-bit mono WAV file")
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise InvalidInput("not a valid WAV file: it does not start with a RIFF/WAVE header")
    riff_size = struct.unpack_from("<I", data, 4)[0]
    if riff_size + 8 != len(data):
        raise InvalidInput(f"not a valid WAV file: its RIFF header declares {riff_size + 8} bytes, "
                           f"but {len(data)} were sent")
    fmt: tuple[int, ...] | None = None
    fmt_body = b""
    fact: int | None = None
    samples: bytes | None = None
    pos = 12
    while pos < len(data) and samples is None:
        if pos + 8 > len(data):
            raise InvalidInput(f"not a valid WAV file: a truncated chunk header at byte {pos}")
        chunk, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if body + size > len(data):
            raise InvalidInput(f"not a valid WAV file: chunk {chunk!r} at byte {pos} declares {size} bytes, "
                               f"only {len(data) - body} follow")
        if chunk == b"fmt ":
            if size < 16:
                raise InvalidInput(f"not a valid WAV file: the fmt chunk has {size} bytes, at least 16 are needed")
            fmt = struct.unpack_from("<HHIIHH", data, body)
            fmt_body = data[body : body + size]
        elif chunk == b"fact" and size >= 4:
            fact = struct.unpack_from("<I", data, body)[0]
        elif chunk == b"data":
            if fmt is None:
                raise InvalidInput("not a valid WAV file: no fmt chunk before the data chunk")
            samples = data[body : body + size]
        pos = body + size + (size & 1)
    if samples is None:
        raise InvalidInput(f"not a valid WAV file: no {'data' if fmt else 'fmt'} chunk")
    assert fmt is not None
    tag, channels, rate, byte_rate, block_align, bits = fmt
    if tag == WAVE_FORMAT_IMA_ADPCM and channels == 1 and bits == 4:
        return _decode_ima_adpcm(samples, fmt, fmt_body, fact, max_seconds), rate
    if tag != WAVE_FORMAT_PCM or channels != 1 or bits != 16:
        raise InvalidInput(f"expected a mono WAV of 16-bit PCM or 4-bit IMA ADPCM, got format {tag} with "
                           f"{channels} channel(s) of {bits} bit")
    _check_rate(rate)
    if block_align != 2 or byte_rate != 2 * rate:
        raise InvalidInput(f"not a valid WAV file: block align {block_align} and byte rate {byte_rate} do not "
                           f"match mono 16-bit at {rate} Hz (2 and {2 * rate})")
    if len(samples) % 2:
        raise InvalidInput(f"not a valid WAV file: the data chunk has an odd size ({len(samples)} bytes)")
    if not samples:
        raise InvalidInput("empty audio: the WAV file's data chunk has no samples")
    _check_length(len(samples) // 2, rate, max_seconds)
    return pcm16_to_float(samples), rate


def _check_rate(rate: int) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise InvalidInput(f"sample rate {rate} Hz is not supported: send {MIN_RATE // 1000}-{MAX_RATE // 1000} kHz")


def _check_length(num_samples: int, rate: int, max_seconds: float) -> None:
    if num_samples > max_seconds * rate:
        raise PayloadTooLarge(f"clip is {num_samples / rate:.2f} s long; at most {max_seconds} s is accepted")


def _decode_ima_adpcm(data: bytes, fmt: tuple[int, ...], fmt_body: bytes, fact: int | None,
                      max_seconds: float) -> np.ndarray:
    """The samples of an IMA ADPCM data chunk; its fmt chunk must state the block layout it uses."""
    _, _, rate, _, block_align, _ = fmt  # (the byte rate of an ADPCM file is informative only)
    _check_rate(rate)
    if len(fmt_body) < 20 or not 5 <= block_align <= 8192:
        raise InvalidInput(f"not a valid IMA ADPCM WAV file: a {len(fmt_body)}-byte fmt chunk with block align "
                           f"{block_align} (needs 20 bytes and a block align of 5-8192)")
    per = struct.unpack_from("<H", fmt_body, 18)[0]
    if per != adpcm.samples_per_block(block_align):
        raise InvalidInput(f"not a valid IMA ADPCM WAV file: {per} samples per block, but {block_align}-byte "
                           f"blocks hold {adpcm.samples_per_block(block_align)}")
    if not data:
        raise InvalidInput("empty audio: the WAV file's data chunk has no samples")
    capacity = adpcm.capacity(len(data), block_align)
    if capacity == 0:
        raise InvalidInput(f"not a valid IMA ADPCM WAV file: its {len(data)}-byte data chunk holds no sample (a "
                           "block starts with a 4-byte header)")
    count = capacity if fact is None else fact
    if not 0 < count <= capacity:
        raise InvalidInput(f"not a valid IMA ADPCM WAV file: its fact chunk declares {count} samples, the data "
                           f"chunk holds at most {capacity}")
    _check_length(count, rate, max_seconds)
    return pcm16_to_float(adpcm.decode(data, count, block_align))


def encode_wav(audio: np.ndarray, sample_rate: int, codec: str = "pcm16") -> bytes:
    """A mono WAV file: 16-bit PCM, or with codec="ima-adpcm" 4-bit IMA ADPCM (a quarter of the bytes)."""
    if codec == "ima-adpcm":
        return _encode_ima_adpcm(audio, sample_rate)
    if codec != "pcm16":
        raise ValueError(f"unknown WAV codec {codec!r}; choose from {WAV_CODECS}")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(float_to_pcm16(audio))
    return buf.getvalue()


def _encode_ima_adpcm(audio: np.ndarray, sample_rate: int) -> bytes:
    pcm = np.frombuffer(float_to_pcm16(audio), dtype="<i2")
    data = adpcm.encode(pcm)
    per, align = adpcm.samples_per_block(adpcm.BLOCK_ALIGN), adpcm.BLOCK_ALIGN
    byte_rate = sample_rate * align // per
    fmt = struct.pack("<HHIIHHHH", WAVE_FORMAT_IMA_ADPCM, 1, sample_rate, byte_rate, align, 4, 2, per)
    chunks = (b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<II", 4, len(pcm))
              + b"data" + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1))
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def read_wav(path: str) -> tuple[np.ndarray, int]:
    with open(path, "rb") as f:
        return decode_wav(f.read(), max_seconds=float("inf"))
