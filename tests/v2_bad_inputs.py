"""A corpus of bad Open Inference Protocol (V2) requests, built from one good clip: what a broken client or an
attacker sends to ``/v2/...`` and to ``inference.GRPCInferenceService``.

- ``rest_cases(...)``: (method, path, body, headers) for the REST routes: bodies that are no V2 request,
  tensors that lie about their datatype, shape or size, binary tensor data whose header lies;
- ``grpc_cases(...)``: (method, serialized request) for the gRPC service, the same lies in the proto.
Every case must be refused with a 4xx / INVALID_ARGUMENT / NOT_FOUND and a message; nothing may be a 5xx,
INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from kws_rpc.proto.inference import grpc_service_pb2 as v2

HEADER = "Inference-Header-Content-Length"
Case = tuple[str, str, bytes, dict[str, str]]


def _prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _wav_input(b64: str, **over: Any) -> dict[str, Any]:
    return {"name": "wav", "shape": [1], "datatype": "BYTES", "data": [b64], **over}


def rest_cases(model: str, wav: bytes, shape: tuple[int, int]) -> dict[str, Case]:
    """``shape``: the model's feature shape (frames, bins)."""
    frames, bins = shape
    n = frames * bins
    b64 = base64.b64encode(wav).decode()
    infer = f"/v2/models/{model}/infer"

    def body(doc: Any) -> bytes:
        return json.dumps(doc).encode()

    def req(*inputs: dict[str, Any], **extra: Any) -> bytes:
        return body({"inputs": list(inputs), **extra})

    def binary(inputs: list[dict[str, Any]], blob: bytes, header: str | None = None) -> tuple[bytes, dict[str, str]]:
        head = body({"inputs": inputs})
        return head + blob, {HEADER: str(len(head)) if header is None else header}

    raw = _prefixed(wav)
    feats = {"name": "features", "shape": [1, frames, bins], "datatype": "FP32"}
    json_cases: dict[str, bytes] = {
        "empty body": b"",
        "not JSON": b"{",
        "invalid UTF-8": b"\xff\xfe{",
        "JSON array": b"[]",
        "JSON number": b"3",
        "JSON string": b'"inputs"',
        "nested 1000 deep": b"[" * 1000 + b"]" * 1000,
        "no inputs": body({}),
        "inputs empty": req(),
        "inputs not a list": body({"inputs": _wav_input(b64)}),
        "input not an object": body({"inputs": [1]}),
        "input without name": req({k: v for k, v in _wav_input(b64).items() if k != "name"}),
        "input name a number": req(_wav_input(b64, name=5)),
        "unknown input": req(_wav_input(b64, name="audio")),
        "datatype missing": req({k: v for k, v in _wav_input(b64).items() if k != "datatype"}),
        "wav as FP32": req(_wav_input(b64, datatype="FP32")),
        "features as INT8": req({**feats, "datatype": "INT8", "data": [0] * n}),
        "features as FP64": req({**feats, "datatype": "FP64", "data": [0.0] * n}),
        "shape missing": req({k: v for k, v in _wav_input(b64).items() if k != "shape"}),
        "shape of strings": req(_wav_input(b64, shape=["1"])),
        "shape negative": req(_wav_input(b64, shape=[-1])),
        "shape float": req(_wav_input(b64, shape=[1.5])),
        "shape bool": req(_wav_input(b64, shape=[True])),
        "shape beyond int64": req(_wav_input(b64, shape=[2**64])),
        "wav shape [1, 2]": req(_wav_input(b64, shape=[1, 2])),
        "wav shape [0]": req(_wav_input(b64, shape=[0], data=[])),
        "wav shape huge": req(_wav_input(b64, shape=[2**62])),
        "wav count short of shape": req(_wav_input(b64, shape=[2])),
        "wav data not base64": req(_wav_input("***not base64***")),
        "wav data non-ASCII": req(_wav_input("é" * 8)),
        "wav data a number": req(_wav_input(b64, data=[123])),
        "wav data not a WAV": req(_wav_input(base64.b64encode(b"hello, not a wav file").decode())),
        "wav data empty": req(_wav_input("")),
        "no data and no binary_data_size": req({k: v for k, v in _wav_input(b64).items() if k != "data"}),
        "features rank 2": req({**feats, "shape": [1, n], "data": [0.0] * n}),
        "features wrong frames": req({**feats, "shape": [1, frames + 1, bins], "data": [0.0] * (n + bins)}),
        "features data short": req({**feats, "data": [0.0] * 10}),
        "features data of strings": req({**feats, "data": ["1.0"] * n}),
        "features data of nulls": req({**feats, "data": [None] * n}),
        "features overflow float32": req({**feats, "data": [1e39] * n}),
        "features huge batch": req({**feats, "shape": [10**9, frames, bins], "data": [0.0] * n}),
        "two wav inputs": req(_wav_input(b64), _wav_input(b64)),
        "wav and features": req(_wav_input(b64), {**feats, "data": [0.0] * n}),
        "unknown output": req(_wav_input(b64), outputs=[{"name": "logits"}]),
        "output twice": req(_wav_input(b64), outputs=[{"name": "label"}, {"name": "label"}]),
        "outputs not a list": req(_wav_input(b64), outputs="label"),
        "output binary_data a string": req(_wav_input(b64), outputs=[{"name": "label", "parameters": {"binary_data": "yes"}}]),
        "classification asked": req(_wav_input(b64), outputs=[{"name": "label", "parameters": {"classification": 3}}]),
        "parameters a list": req(_wav_input(b64), parameters=[1]),
        "parameter an object": req(_wav_input(b64), parameters={"x": {"a": 1}}),
        "binary_data_output a number": req(_wav_input(b64), parameters={"binary_data_output": 1}),
        "id a number": req(_wav_input(b64), id=5),
        "id of 1000 characters": req(_wav_input(b64), id="x" * 1000),
    }
    cases: dict[str, Case] = {k: ("POST", infer, v, {}) for k, v in json_cases.items()}
    wav_bin = {"name": "wav", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}
    binary_cases = {
        "header beyond the body": binary([wav_bin], raw, header="999999"),
        "header negative": binary([wav_bin], raw, header="-5"),
        "header not a number": binary([wav_bin], raw, header="abc"),
        "header empty": binary([wav_bin], raw, header=""),
        "header cuts the JSON": binary([wav_bin], raw, header="10"),
        "header 0": binary([wav_bin], raw, header="0"),
        "binary_data_size without header": (body({"inputs": [wav_bin]}) + raw, {}),
        "binary_data_size past the data": binary([{**wav_bin, "parameters": {"binary_data_size": len(raw) + 100}}], raw),
        "binary_data_size negative": binary([{**wav_bin, "parameters": {"binary_data_size": -1}}], raw),
        "binary_data_size a string": binary([{**wav_bin, "parameters": {"binary_data_size": str(len(raw))}}], raw),
        "binary data left over": binary([wav_bin], raw + b"extra"),
        "binary_data_size and data": binary([{**wav_bin, "data": [b64]}], raw),
        "BYTES length runs past": binary([{**wav_bin, "parameters": {"binary_data_size": len(raw) - 1}}], raw[:-1]),
        "BYTES length prefix truncated": binary([{**wav_bin, "parameters": {"binary_data_size": 2}}], b"\x01\x00"),
        "BYTES length 4 GiB": binary([{**wav_bin, "parameters": {"binary_data_size": 8}}], b"\xff\xff\xff\xff" + b"RIFF"),
        "BYTES no element for shape [1]": binary([{**wav_bin, "parameters": {"binary_data_size": 0}}], b""),
        "BYTES binary not a WAV": binary([{**wav_bin, "parameters": {"binary_data_size": 12}}], _prefixed(b"RIFF\0\0\0\0")),
        "features binary 3 bytes short": binary([{**feats, "parameters": {"binary_data_size": n * 4 - 3}}], b"\0" * (n * 4 - 3)),
        "features binary huge shape": binary([{**feats, "shape": [2**40, frames, bins],
                                               "parameters": {"binary_data_size": n * 4}}], b"\0" * (n * 4)),
        "features binary NaN": binary([{**feats, "parameters": {"binary_data_size": n * 4}}], b"\0\0\xc0\x7f" * n),
    }
    cases.update({k: ("POST", infer, b, h) for k, (b, h) in binary_cases.items()})
    good = req(_wav_input(b64))
    cases.update({
        "unknown model": ("POST", "/v2/models/nope/infer", good, {}),
        "unknown version": ("POST", f"/v2/models/{model}/versions/99/infer", good, {}),
        "model name of 2000 characters": ("POST", f"/v2/models/{'m' * 2000}/infer", good, {}),
        "metadata of an unknown model": ("GET", "/v2/models/nope", b"", {}),
        "metadata of an unknown version": ("GET", f"/v2/models/{model}/versions/2", b"", {}),
        "readiness of an unknown model": ("GET", "/v2/models/nope/ready", b"", {}),
        "infer with GET": ("GET", infer, b"", {}),
        "unknown V2 route": ("GET", "/v2/repository/index", b"", {}),
        "body of 2 MB": ("POST", infer, b" " * (2 << 20), {}),
    })
    return cases


def grpc_cases(model: str, wav: bytes, shape: tuple[int, int]) -> dict[str, tuple[str, bytes]]:
    """(method, serialized request) pairs for inference.GRPCInferenceService."""
    frames, bins = shape
    n = frames * bins
    tensor = v2.ModelInferRequest.InferInputTensor

    def infer(*inputs: Any, raw: list[bytes] | None = None, **fields: Any) -> bytes:
        return v2.ModelInferRequest(model_name=fields.pop("model_name", model), inputs=list(inputs),
                                    raw_input_contents=raw or [], **fields).SerializeToString()

    wav_in = tensor(name="wav", datatype="BYTES", shape=[1])
    feats_in = tensor(name="features", datatype="FP32", shape=[1, frames, bins])
    raw = _prefixed(wav)
    cases = {
        "malformed proto": b"\xff\xff\xff",
        "no model name": infer(wav_in, raw=[raw], model_name=""),
        "unknown model": infer(wav_in, raw=[raw], model_name="nope"),
        "unknown version": infer(wav_in, raw=[raw], model_version="99"),
        "no inputs": infer(),
        "wav as FP32": infer(tensor(name="wav", datatype="FP32", shape=[1]), raw=[raw]),
        "features as BYTES": infer(tensor(name="features", datatype="BYTES", shape=[1]), raw=[raw]),
        "unknown input": infer(tensor(name="audio", datatype="BYTES", shape=[1]), raw=[raw]),
        "two raw contents for one input": infer(wav_in, raw=[raw, raw]),
        "raw and typed contents": infer(tensor(name="wav", datatype="BYTES", shape=[1],
                                               contents=v2.InferTensorContents(bytes_contents=[wav])), raw=[raw]),
        "features raw 3 bytes short": infer(feats_in, raw=[b"\0" * (n * 4 - 3)]),
        "features contents short": infer(tensor(name="features", datatype="FP32", shape=[1, frames, bins],
                                                contents=v2.InferTensorContents(fp32_contents=[0.0] * 10))),
        "features in int_contents": infer(tensor(name="features", datatype="FP32", shape=[1, frames, bins],
                                                 contents=v2.InferTensorContents(int_contents=[0] * n))),
        "features shape negative": infer(tensor(name="features", datatype="FP32", shape=[-1, frames, bins]),
                                         raw=[b"\0" * (n * 4)]),
        "features shape huge": infer(tensor(name="features", datatype="FP32", shape=[2**40, frames, bins]),
                                     raw=[b"\0" * (n * 4)]),
        "wav shape 2**62": infer(tensor(name="wav", datatype="BYTES", shape=[2**62]), raw=[raw]),
        "wav shape [1, 2]": infer(tensor(name="wav", datatype="BYTES", shape=[1, 2]), raw=[raw]),
        "wav contents with fp32 too": infer(tensor(name="wav", datatype="BYTES", shape=[1],
                                                   contents=v2.InferTensorContents(bytes_contents=[wav],
                                                                                   fp32_contents=[1.0]))),
        "BYTES length runs past": infer(wav_in, raw=[raw[:-1]]),
        "BYTES length prefix truncated": infer(wav_in, raw=[b"\x01\x00"]),
        "BYTES two elements for shape [1]": infer(wav_in, raw=[raw + raw]),
        "wav not a WAV": infer(wav_in, raw=[_prefixed(b"not a wav at all")]),
        "two wav inputs": infer(wav_in, wav_in, raw=[raw, raw]),
        "wav and features": infer(wav_in, feats_in, raw=[raw, b"\0" * (n * 4)]),
        "unknown output": infer(wav_in, raw=[raw], outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name="x")]),
        "output twice": infer(wav_in, raw=[raw], outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name="label")] * 2),
        "id of 1000 characters": infer(wav_in, raw=[raw], id="x" * 1000),
    }
    out = {f"infer: {k}": ("ModelInfer", v) for k, v in cases.items()}
    out.update({
        "metadata: malformed proto": ("ModelMetadata", b"\xff\xff\xff"),
        "metadata: unknown model": ("ModelMetadata", v2.ModelMetadataRequest(name="nope").SerializeToString()),
        "metadata: unknown version": ("ModelMetadata", v2.ModelMetadataRequest(name=model, version="7").SerializeToString()),
        "ready: unknown model": ("ModelReady", v2.ModelReadyRequest(name="nope").SerializeToString()),
        "ready: malformed proto": ("ModelReady", b"\x0a\xff"),
    })
    return out
