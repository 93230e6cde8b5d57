"""WAV and PCM decoding shared by the edge, the server and training (stdlib + numpy only)."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np

from kws_rpc.errors import InvalidInput, PayloadTooLarge

MAX_CLIP_SECONDS = 2.0
MIN_RATE, MAX_RATE = 8000, 48000  # sample rates the server resamples from (Hz)
WAVE_FORMAT_PCM = 1


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
    """Decode a mono 16-bit PCM WAV file. Returns (float32 samples, sample rate).

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
        elif chunk == b"data":
            if fmt is None:
                raise InvalidInput("not a valid WAV file: no fmt chunk before the data chunk")
            samples = data[body : body + size]
        pos = body + size + (size & 1)
    if samples is None:
        raise InvalidInput(f"not a valid WAV file: no {'data' if fmt else 'fmt'} chunk")
    assert fmt is not None
    tag, channels, rate, byte_rate, block_align, bits = fmt
    if tag != WAVE_FORMAT_PCM or channels != 1 or bits != 16:
        raise InvalidInput(f"expected mono 16-bit PCM WAV, got format {tag} with {channels} channel(s) of {bits} bit")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise InvalidInput(f"sample rate {rate} Hz is not supported: send {MIN_RATE // 1000}-{MAX_RATE // 1000} kHz")
    if block_align != 2 or byte_rate != 2 * rate:
        raise InvalidInput(f"not a valid WAV file: block align {block_align} and byte rate {byte_rate} do not "
                           f"match mono 16-bit at {rate} Hz (2 and {2 * rate})")
    if len(samples) % 2:
        raise InvalidInput(f"not a valid WAV file: the data chunk has an odd size ({len(samples)} bytes)")
    if not samples:
        raise InvalidInput("empty audio: the WAV file's data chunk has no samples")
    if len(samples) // 2 > max_seconds * rate:
        raise PayloadTooLarge(f"clip is {len(samples) / 2 / rate:.2f} s long; at most {max_seconds} s is accepted")
    return pcm16_to_float(samples), rate


def encode_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(float_to_pcm16(audio))
    return buf.getvalue()


def read_wav(path: str) -> tuple[np.ndarray, int]:
    with open(path, "rb") as f:
        return decode_wav(f.read(), max_seconds=float("inf"))
