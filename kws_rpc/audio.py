"""WAV and PCM decoding shared by the edge, the server and training (stdlib + numpy only)."""

from __future__ import annotations

import io
import wave

import numpy as np

from kws_rpc.errors import InvalidInput, PayloadTooLarge

MAX_CLIP_SECONDS = 2.0


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
    """Decode a mono 16-bit PCM WAV file. Returns (float32 samples, sample rate)."""
    if not data:
        raise InvalidInput("empty audio: expected the bytes of a 16-bit mono WAV file")
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            if channels != 1 or width != 2:
                raise InvalidInput(f"expected mono 16-bit PCM WAV, got {channels} channel(s) of {8 * width} bit")
            if n > max_seconds * rate:
                raise PayloadTooLarge(f"clip is {n / rate:.2f} s long; at most {max_seconds} s is accepted")
            frames = w.readframes(n)
    except (wave.Error, EOFError) as e:
        raise InvalidInput(f"not a valid WAV file: {e}") from None
    return pcm16_to_float(frames[: len(frames) // 2 * 2]), rate


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
