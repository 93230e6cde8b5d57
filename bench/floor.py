"""The floor of a request: what any server must spend on it (decoding the WAV, base64 too when it came in
JSON, features, one model call), measured in the benchmark's own process so that a server's CPU per
request can be read against it. Shared by bench-server and bench-peers."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kws_rpc.audio.wav import decode_wav
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.model.native import tune_process

KINDS = ("wav", "wav-base64", "features")  # what a request carries: a WAV, a base64 WAV, float32 features


def floor_ms(model: KwsModel, clips: list[Path], repeats: int = 40) -> dict[str, float]:
    """Milliseconds of CPU per request of each kind, on ``clips``, with one BLAS thread as in a server
    process (a threaded BLAS would count its spinning threads' CPU too)."""
    tune_process()
    wavs = [p.read_bytes() for p in clips]
    feats = [model.features(decode_wav(w)[0]).astype(np.float32).tobytes() for w in wavs]
    shape = model.card.feature.shape
    b64 = [base64.b64encode(w).decode() for w in wavs]
    steps: dict[str, Callable[[int], object]] = {
        "wav": lambda i: model.predict(model.features(*decode_wav(wavs[i]))),
        "wav-base64": lambda i: model.predict(model.features(*decode_wav(base64.b64decode(b64[i])))),
        "features": lambda i: model.predict(np.frombuffer(feats[i], np.float32).reshape(1, *shape)),
    }
    for step in steps.values():  # warm every path first
        for i in range(len(wavs)):
            step(i)
    times: dict[str, list[float]] = {kind: [] for kind in steps}
    rounds = 5  # interleaved, the median of each: a slower first stretch or a busy moment does not bias one kind
    for _ in range(rounds):
        for kind, step in steps.items():
            t0 = time.process_time()
            for _ in range(max(1, repeats // rounds)):
                for i in range(len(wavs)):
                    step(i)
            times[kind].append(1000 * (time.process_time() - t0) / (max(1, repeats // rounds) * len(wavs)))
    return {kind: float(np.median(t)) for kind, t in times.items()}
