"""What every peer does with an Open Inference Protocol (V2) request, in kws's code: one input tensor,
either ``wav`` (BYTES, one WAV file per element, base64 text in JSON) or ``features`` (FP32, [-1, frames, bins]), and one
output, ``probabilities`` (FP32, [-1, labels]). Numpy and kws's runtime only: it runs in the peers' venvs."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from kws_rpc.audio.wav import decode_wav
from kws_rpc.model.kws_model import KwsModel


class V2Kws:
    def __init__(self, path: str | Path) -> None:
        self.model = KwsModel(path)
        self.name = self.model.name

    def probabilities(self, datatype: str, data: np.ndarray) -> np.ndarray:
        if datatype == "BYTES":
            # binary (gRPC raw contents) or, in JSON where bytes must be text, base64 (KServe's REST decodes
            # BYTES as UTF-8, which a WAV file is not)
            clips = [decode_wav(base64.b64decode(b) if isinstance(b, str) else bytes(b))
                     for b in np.asarray(data, dtype=object).ravel()]
            feats = np.stack([self.model.features(audio, rate) for audio, rate in clips])
        elif datatype == "FP32":
            feats = np.asarray(data, dtype=np.float32).reshape((-1, *self.model.card.feature.shape))
        else:
            raise ValueError(f"input datatype {datatype} is neither BYTES (WAV files) nor FP32 (features)")
        return self.model.predict(feats)
