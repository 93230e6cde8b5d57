"""Where the Pi's audio comes from: a WAV file of any length, raw 16-bit PCM on stdin (`arecord -t raw`),
or a microphone (PortAudio through `sounddevice`). Each source yields float32 blocks in [-1, 1] at the
model's rate (resampled with soxr when the input's rate differs) and counts what went wrong in
``SourceStats``, so that a listener can say what it lost instead of stopping silently.

The microphone needs Debian's libportaudio2 (`apt-get install libportaudio2`) and the `sounddevice`
package (the edge extra); both are imported only when a microphone is opened.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from kws_rpc.audio.wav import MAX_RATE, MIN_RATE

log = logging.getLogger("kws.edge.sources")


class SourceError(RuntimeError):
    """An input that cannot be read at all (a missing file, a WAV that is not 16-bit mono PCM)."""


@dataclasses.dataclass
class SourceStats:
    seconds: float = 0.0  # audio delivered, at the model's rate
    odd_bytes: int = 0  # a raw stream's trailing byte that made no whole 16-bit sample
    overflows: int = 0  # microphone blocks the driver dropped because we read too slowly
    reopens: int = 0  # times the microphone was (re)opened after an error

    @property
    def lost(self) -> bool:
        return bool(self.odd_bytes or self.overflows or self.reopens)


class Resampler:
    """Streaming resampling to ``out_rate`` (soxr keeps its filter state across blocks)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        check_rate(in_rate)
        self.in_rate, self.out_rate = in_rate, out_rate
        self._stream = None
        if in_rate != out_rate:
            import soxr

            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def __call__(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return x
        return self._stream.resample_chunk(np.asarray(x, np.float32), last=last)


def check_rate(rate: int) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise SourceError(f"a sample rate of {rate} Hz is not supported: give audio at {MIN_RATE}-{MAX_RATE} Hz")


def pcm16(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def wav_file(path: str | Path, out_rate: int, stats: SourceStats, block_s: float = 0.1,
             rate: int | None = None, max_seconds: float | None = None) -> Iterator[np.ndarray]:
    """Blocks of a mono 16-bit PCM WAV file of any length. ``rate``, if given, must match its header."""
    try:
        w = wave.open(str(path), "rb")
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except (wave.Error, EOFError, RuntimeError, ValueError, OSError) as e:  # the stdlib raises all of these on a bad header
        raise SourceError(f"{path}: not a PCM WAV file ({e}); convert it with "
                          "`sox IN -c 1 -b 16 -e signed-integer OUT.wav`") from None
    with w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise SourceError(f"{path}: {w.getnchannels()} channel(s) of {8 * w.getsampwidth()}-bit samples; kws "
                              "reads mono 16-bit PCM: convert it with `sox IN -c 1 -b 16 OUT.wav`")
        if rate is not None and rate != w.getframerate():
            raise SourceError(f"{path}: its header says {w.getframerate()} Hz but --rate says {rate} Hz; "
                              "drop --rate for WAV files (the header is read)")
        if max_seconds is not None and w.getnframes() > max_seconds * w.getframerate():
            raise SourceError(f"{path}: {w.getnframes() / w.getframerate():.1f} s is longer than the "
                              f"{max_seconds:g} s this command takes")
        resample = Resampler(w.getframerate(), out_rate)
        block = max(1, int(block_s * w.getframerate()))
        while True:
            data = w.readframes(block)
            last = len(data) < 2 * block
            x = resample(pcm16(data), last=last)
            stats.seconds += len(x) / out_rate
            if len(x):
                yield x
            if last:
                return


def raw_stream(stream: BinaryIO, rate: int, out_rate: int, stats: SourceStats,
               block_s: float = 0.1) -> Iterator[np.ndarray]:
    """Raw little-endian 16-bit mono PCM (`arecord -q -t raw -f S16_LE -r 16000 -c 1`) until EOF. A read
    that ends mid-sample keeps its odd byte for the next; one left at EOF is counted and dropped."""
    resample = Resampler(rate, out_rate)
    block = 2 * max(1, int(block_s * rate))
    carry = b""
    while True:
        data = stream.read(block)
        if not data:
            break
        data = carry + data
        carry = data[len(data) // 2 * 2 :]
        x = resample(pcm16(data[: len(data) // 2 * 2]))
        stats.seconds += len(x) / out_rate
        if len(x):
            yield x
    if carry:
        stats.odd_bytes += len(carry)
        log.warning("the input ended in the middle of a 16-bit sample: %d byte dropped (is it really "
                    "S16_LE mono?)", len(carry))
    tail = resample(np.zeros(0, np.float32), last=True)
    if len(tail):
        stats.seconds += len(tail) / out_rate
        yield tail


def microphone(device: str | int | None, out_rate: int, stats: SourceStats, stop: threading.Event,
               block_s: float = 0.1, rate: int | None = None, retry_s: float = 1.0,
               buffer_s: float = 2.0) -> Iterator[np.ndarray]:
    """Blocks from a PortAudio input device (default: the system's), at its own rate unless ``rate`` is
    given, resampled to ``out_rate``. Up to ``buffer_s`` of audio waits for a busy listener; beyond it,
    new blocks are dropped and counted as overflows, as are the driver's own. A device that fails or
    disappears is reopened every ``retry_s`` until ``stop`` is set, each attempt logged and counted."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:  # OSError: the package is there but libportaudio2 is not
        raise SourceError(f"no microphone support ({e}): `apt-get install libportaudio2` and "
                          "`pip install sounddevice` (the edge extra)") from None
    while not stop.is_set():
        blocks: queue.Queue[np.ndarray] = queue.Queue(maxsize=max(1, round(buffer_s / block_s)))

        def callback(indata: np.ndarray, frames: int, _t: object, status: object) -> None:
            if getattr(status, "input_overflow", False):
                stats.overflows += 1
            try:
                blocks.put_nowait(indata[:, 0].astype(np.float32) / 32768.0)
            except queue.Full:  # we are too slow: drop, and say so
                stats.overflows += 1

        try:
            info = sd.query_devices(device, "input")
            in_rate = int(rate or info["default_samplerate"])
            check_rate(in_rate)
            resample = Resampler(in_rate, out_rate)
            with sd.InputStream(device=device, samplerate=in_rate, channels=1, dtype="int16",
                                blocksize=max(1, int(block_s * in_rate)), callback=callback) as s:
                log.info("listening to %s at %d Hz", info["name"], in_rate)
                reported, reported_at = stats.overflows, -np.inf
                while not stop.is_set():
                    try:
                        x = blocks.get(timeout=max(1.0, 4 * block_s))
                    except queue.Empty:
                        if not s.active:
                            raise RuntimeError("the input stream stopped") from None
                        raise RuntimeError("no audio for a while: the device is silent or gone") from None
                    y = resample(x)
                    stats.seconds += len(y) / out_rate
                    if len(y):
                        yield y
                    if stats.overflows > reported and time.monotonic() - reported_at > 10:
                        log.warning("microphone overflow: %d blocks dropped so far (the Pi is too busy?)",
                                    stats.overflows)
                        reported, reported_at = stats.overflows, time.monotonic()
        except SourceError:
            raise
        except Exception as e:  # sounddevice.PortAudioError, a vanished device, a stalled stream
            if stop.is_set():
                break
            stats.reopens += 1
            log.warning("microphone %s: %s; retrying in %.0f s (attempt %d)", device if device is not None
                        else "(default)", e, retry_s, stats.reopens)
            stop.wait(retry_s)
