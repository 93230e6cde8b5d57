"""NVIDIA's tritonclient against a kws server's Open Inference Protocol (V2), as a user would call it.

Run in .venv-triton (tritonclient and numpy only; kws is not installed there) by tests/test_v2.py:

    .venv-triton/bin/python tests/support/triton_client_check.py --http 127.0.0.1:8080 --grpc 127.0.0.1:50051 \
        --model big_int8 --clips DIR --features features.npy [--ca ca.pem --token TOKEN] [--batch 10]

DIR holds the clips as 000.wav, 001.wav, ...; features.npy their features (clips, frames, bins). Prints one
JSON object: health, server and model metadata, and the top label of every clip by each way of asking
(HTTP binary, HTTP JSON, gRPC; WAV and features).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def http_labels(client: Any, model: str, wavs: list[bytes], feats: np.ndarray, kind: str, binary: bool,
                batch: int, headers: dict[str, str]) -> tuple[list[str], list[str]]:
    """Top labels of every clip, and the probabilities' column names, over HTTP."""
    labels: list[str] = []
    columns: list[str] = []
    for s in batches(len(wavs), batch):
        if kind == "wav":
            # JSON strings are text: in JSON mode each WAV file goes as base64 text
            data = np.array([w if binary else base64.b64encode(w) for w in wavs[s]], dtype=object)
            x = httpclient.InferInput("wav", [len(data)], "BYTES")
        else:
            data = feats[s]
            x = httpclient.InferInput("features", list(data.shape), "FP32")
        x.set_data_from_numpy(data, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("label", binary_data=binary),
                   httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
        # a copy: tritonclient writes Inference-Header-Content-Length into the dict it is given
        result = client.infer(model, [x], outputs=outputs, request_id=f"http-{s.start}", headers=dict(headers))
        assert result.get_response()["id"] == f"http-{s.start}", result.get_response()
        probs = result.as_numpy("probabilities")
        assert probs.shape == (len(data), len(probs[0])), probs.shape
        columns = result.get_output("probabilities")["parameters"]["labels"].split(",")
        labels += [v.decode() if isinstance(v, bytes) else str(v) for v in result.as_numpy("label")]
        assert [columns[i] for i in probs.argmax(axis=1)] == labels[-len(data):]
    return labels, columns


def grpc_labels(client: Any, model: str, wavs: list[bytes], feats: np.ndarray, kind: str, batch: int,
                headers: dict[str, str]) -> list[str]:
    labels: list[str] = []
    for s in batches(len(wavs), batch):
        if kind == "wav":
            data = np.array(wavs[s], dtype=object)
            x = grpcclient.InferInput("wav", [len(data)], "BYTES")
        else:
            data = feats[s]
            x = grpcclient.InferInput("features", list(data.shape), "FP32")
        x.set_data_from_numpy(data)
        result = client.infer(model, [x], request_id=f"grpc-{s.start}", headers=headers)
        assert result.get_response().id == f"grpc-{s.start}"
        labels += [v.decode() for v in result.as_numpy("label")]
    return labels


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--http", required=True, help="host:port of the REST gateway")
    ap.add_argument("--grpc", help="host:port of the gRPC server (skip gRPC if not given)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--clips", type=Path, required=True)
    ap.add_argument("--features", type=Path, required=True)
    ap.add_argument("--ca", help="TLS: trust this CA (https and gRPC over TLS)")
    ap.add_argument("--token", help="bearer token sent on every call")
    ap.add_argument("--batch", type=int, default=10)
    a = ap.parse_args(argv)
    wavs = [p.read_bytes() for p in sorted(a.clips.glob("*.wav"))]
    feats = np.load(a.features).astype(np.float32)
    headers = {"Authorization": f"Bearer {a.token}"} if a.token else {}
    tls = {"ssl": True, "ssl_options": {"ca_certs": a.ca}, "insecure": False} if a.ca else {}
    http = httpclient.InferenceServerClient(a.http, **tls)
    out: dict[str, Any] = {
        "http_live": http.is_server_live(), "http_ready": http.is_server_ready(),
        "http_model_ready": http.is_model_ready(a.model, headers=headers),
        "http_server_metadata": http.get_server_metadata(headers=headers),
        "http_model_metadata": http.get_model_metadata(a.model, headers=headers),
        "labels": {},
    }
    for kind in ("wav", "features"):
        for binary in (True, False):
            labels, columns = http_labels(http, a.model, wavs, feats, kind, binary, a.batch, headers)
            out["labels"][f"http-{'binary' if binary else 'json'}-{kind}"] = labels
            out["columns"] = columns
    http.close()
    if a.grpc:
        grpc_headers = {k.lower(): v for k, v in headers.items()}
        g = grpcclient.InferenceServerClient(a.grpc, ssl=bool(a.ca), root_certificates=a.ca)
        out["grpc_live"] = g.is_server_live(headers=grpc_headers)
        out["grpc_ready"] = g.is_server_ready(headers=grpc_headers)
        out["grpc_model_ready"] = g.is_model_ready(a.model, headers=grpc_headers)
        out["grpc_server_metadata"] = g.get_server_metadata(headers=grpc_headers, as_json=True)
        out["grpc_model_metadata"] = g.get_model_metadata(a.model, headers=grpc_headers, as_json=True)
        for kind in ("wav", "features"):
            out["labels"][f"grpc-{kind}"] = grpc_labels(g, a.model, wavs, feats, kind, a.batch, grpc_headers)
        g.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
