"""Prints, as JSON, the Open Inference Protocol (V2) requests the serving benchmark sends the peers, one
per fixture clip and payload: gRPC ModelInferRequest bytes (base64) and REST JSON bodies. It runs in a
peer's venv, whose KServe package carries the V2 protobuf stubs (kws's own venv has protobuf 7, they 6).

    .venv-peers-kserve/bin/python -m bench.peers.v2_requests MODEL_NAME FEATURES.npy CLIP.wav ...
"""

from __future__ import annotations

import base64
import json
import struct
import sys
from pathlib import Path

import numpy as np
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def main(argv: list[str]) -> None:
    name, features_file, *wavs = argv
    features = np.load(features_file).astype("<f4")  # (clips, frames, bins), computed by kws in its venv
    out: dict[str, list[tuple[str, str]]] = {"grpc-wav": [], "grpc-features": [], "rest-wav": []}
    for path, feats in zip(wavs, features):
        word, wav = Path(path).stem, Path(path).read_bytes()
        tensor = pb.ModelInferRequest.InferInputTensor
        out["grpc-wav"].append((word, base64.b64encode(pb.ModelInferRequest(
            model_name=name, inputs=[tensor(name="wav", datatype="BYTES", shape=[1])],
            raw_input_contents=[struct.pack("<I", len(wav)) + wav]).SerializeToString()).decode()))
        out["grpc-features"].append((word, base64.b64encode(pb.ModelInferRequest(
            model_name=name, inputs=[tensor(name="features", datatype="FP32", shape=[1, *feats.shape])],
            raw_input_contents=[feats.tobytes()]).SerializeToString()).decode()))
        out["rest-wav"].append((word, json.dumps({"inputs": [{"name": "wav", "shape": [1], "datatype": "BYTES",
                                                              "data": [base64.b64encode(wav).decode()]}]})))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
