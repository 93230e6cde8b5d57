"""The Open Inference Protocol's REST body, to and from the V2 proto messages ``kws_rpc.wire.v2`` handles.

A request body is a JSON head, optionally followed by binary tensor data (Triton's binary tensor data
extension): the header ``Inference-Header-Content-Length`` gives the head's length, and each input sent
in binary says ``"parameters": {"binary_data_size": n}``, its n bytes following the head in input order
(BYTES elements 4-byte length-prefixed, FP32 little-endian). An input sent in JSON has ``data``: numbers
for FP32, flat or nested; for BYTES, base64 text (one WAV file per element: a WAV file is not UTF-8 text,
which JSON strings are). Either way the request becomes a ``ModelInferRequest`` with raw contents, so REST
and gRPC clients reach the same code.

The reply is JSON, except outputs asked with ``"parameters": {"binary_data": true}`` (or every output, by
the request's ``"parameters": {"binary_data_output": true}``): those follow the JSON head as binary data,
the head's length in the ``Inference-Header-Content-Length`` response header, as Triton answers. In JSON,
the ``label`` output's elements are plain text.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from kws_rpc.errors import InvalidInput, quote
from kws_rpc.proto.inference import grpc_service_pb2 as v2
from kws_rpc.wire import safejson
from kws_rpc.wire.v2 import check_datatype, element_count, join_bytes, split_bytes

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_DIM = 2**63 - 1  # a shape dimension is an int64


@dataclasses.dataclass(frozen=True)
class InferCall:
    """A REST infer request as the V2 proto, and how its reply's outputs are wanted (binary or JSON)."""

    request: v2.ModelInferRequest
    binary: dict[str, bool]  # per output named in the request
    binary_default: bool  # the request's binary_data_output

    def wants_binary(self, output: str) -> bool:
        return self.binary.get(output, self.binary_default)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes | None]:
    if header_length is None:
        return body, None
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > len(body):
        raise InvalidInput(f"{HEADER_LENGTH} {quote(header_length, 40)} is not a byte count within the body's "
                           f"{len(body)} bytes: send the length of the JSON head")
    return body[: int(text)], body[int(text):]


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _string(doc: dict[str, Any], key: str, what: str, default: str | None = None) -> str:
    value = doc.get(key, default)
    if not isinstance(value, str):
        raise InvalidInput(f"{what}: {key!r} must be a string" + ("" if default is not None else " and is required"))
    return value


def _parameters(value: Any, what: str) -> dict[str, Any]:
    params = _object({} if value is None else value, f"{what} parameters")
    for key, v in params.items():
        if not isinstance(v, (bool, int, str)):
            raise InvalidInput(f"{what} parameter {quote(key, 40)} must be a boolean, an integer or a string")
    return params


def _to_proto(params: dict[str, Any]) -> dict[str, v2.InferParameter]:
    def one(v: bool | int | str) -> v2.InferParameter:
        if isinstance(v, bool):
            return v2.InferParameter(bool_param=v)
        if isinstance(v, int):
            if not -(2**63) <= v < 2**63:
                raise InvalidInput(f"parameter value {v} does not fit an int64")
            return v2.InferParameter(int64_param=v)
        return v2.InferParameter(string_param=v)
    return {k: one(v) for k, v in params.items()}


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(type(d) is int and 0 <= d <= MAX_DIM for d in value):
        raise InvalidInput(f"input {name}: shape {quote(value, 80)} must be a list of non-negative integers")
    return value


def _leaves(data: Any) -> Iterator[Any]:
    """The elements of flat or nested JSON lists, in row-major order (safejson bounds the nesting)."""
    if isinstance(data, list):
        for d in data:
            yield from _leaves(d)
    else:
        yield data


def _json_data(name: str, datatype: str, shape: list[int], data: Any) -> bytes:
    """An input's JSON ``data`` as the raw contents its datatype has in the proto."""
    values = list(_leaves(data))
    if datatype == "FP32":
        if not all(type(v) in (int, float) for v in values):
            raise InvalidInput(f"input {name}: FP32 data must be numbers")
        if len(values) != element_count(name, shape):
            raise InvalidInput(f"input {name}: shape {shape} holds {element_count(name, shape)} values, but its data "
                               f"has {len(values)}")
        with np.errstate(over="ignore"):  # past float32's range: inf, which the model refuses with a message
            return np.asarray(values, dtype="<f4").tobytes()
    if not all(isinstance(v, str) for v in values):
        raise InvalidInput(f"input {name}: in JSON, each BYTES element is a string, base64 text of one WAV file")
    try:
        return join_bytes([base64.b64decode(v, validate=True) for v in values])
    except (binascii.Error, ValueError):  # ValueError: a non-ASCII character
        raise InvalidInput(f"input {name}: in JSON, each BYTES element is base64 text of one WAV file") from None


def parse_infer(body: bytes, header_length: str | None, model: str, version: str = "") -> InferCall:
    """A REST infer body (and its Inference-Header-Content-Length header, if sent) as an InferCall."""
    head, blobs = _split(body, header_length)
    try:
        doc = _object(safejson.loads(head), "the request")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        hint = f"; binary tensor data needs the {HEADER_LENGTH} header" if header_length is None else ""
        raise InvalidInput(f"the request is not JSON ({e}): send a V2 inference request object{hint}") from None
    req = v2.ModelInferRequest(model_name=model, model_version=version, id=_string(doc, "id", "the request", ""))
    params = _parameters(doc.get("parameters"), "the request")
    binary_default = params.pop("binary_data_output", False)
    req.parameters.update(_to_proto(params))
    inputs = doc.get("inputs")
    if not inputs:
        raise InvalidInput("the request has no inputs: send 'inputs': [{'name', 'shape', 'datatype', 'data'}]")
    if not isinstance(inputs, list):
        raise InvalidInput(f"'inputs' must be a list of input objects, not {type(inputs).__name__}")
    used = 0
    for t in inputs:
        t = _object(t, "each input")
        name = _string(t, "name", "an input")
        datatype = _string(t, "datatype", f"input {quote(name, 40)}")
        check_datatype(name, datatype)
        shape = _shape(t.get("shape"), name)
        tparams = _parameters(t.get("parameters"), f"input {name}")
        size = tparams.pop("binary_data_size", None)
        if size is None:
            if "data" not in t:
                raise InvalidInput(f"input {name} has neither data nor parameters.binary_data_size")
            raw = _json_data(name, datatype, shape, t["data"])
        else:
            if blobs is None:
                raise InvalidInput(f"input {name} declares binary_data_size, but the request has no {HEADER_LENGTH} "
                                   "header to say where the binary data starts")
            if "data" in t or type(size) is not int or size < 0:
                raise InvalidInput(f"input {name}: binary_data_size must be a byte count, without data")
            if size > len(blobs) - used:
                raise InvalidInput(f"input {name} declares binary_data_size {size}, but only {len(blobs) - used} "
                                   "bytes of binary data remain")
            raw = blobs[used: used + size]
            used += size
        req.inputs.add(name=name, datatype=datatype, shape=shape, parameters=_to_proto(tparams))
        req.raw_input_contents.append(raw)
    if blobs is not None and used != len(blobs):
        raise InvalidInput(f"{len(blobs)} bytes follow the JSON head, but the inputs' binary_data_size add up to {used}")
    binary = {}
    outputs = doc.get("outputs", [])
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list of {'name', 'parameters'} objects")
    for o in outputs:
        o = _object(o, "each output")
        name = _string(o, "name", "an output")
        oparams = _parameters(o.get("parameters"), f"output {quote(name, 40)}")
        flag = oparams.pop("binary_data", binary_default)
        if not isinstance(flag, bool):
            raise InvalidInput(f"output {name}: binary_data must be true or false")
        binary[name] = flag
        req.outputs.add(name=name, parameters=_to_proto(oparams))
    if not isinstance(binary_default, bool):
        raise InvalidInput("binary_data_output must be true or false")
    return InferCall(req, binary, binary_default)


def _output(t: v2.ModelInferResponse.InferOutputTensor, raw: bytes | None, binary: bool) -> tuple[Any, bytes | None]:
    """(JSON data, None) or (None, binary data) of one output, from raw or typed contents."""
    if t.datatype == "FP32":
        values = np.frombuffer(raw, "<f4") if raw is not None else np.asarray(t.contents.fp32_contents, "<f4")
        return (None, values.tobytes()) if binary else (values.tolist(), None)
    elements = split_bytes(raw, t.name) if raw is not None else list(t.contents.bytes_contents)
    return (None, join_bytes(elements)) if binary else ([e.decode("utf-8", "replace") for e in elements], None)


def render_infer(resp: v2.ModelInferResponse, call: InferCall) -> tuple[bytes, dict[str, str]]:
    """The reply body and its headers (content type, and the head's length when binary data follows)."""
    outputs, blobs = [], []
    for i, t in enumerate(resp.outputs):
        raw = resp.raw_output_contents[i] if resp.raw_output_contents else None
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        params = {k: getattr(p, p.WhichOneof("parameter_choice") or "string_param") for k, p in t.parameters.items()}
        data, blob = _output(t, raw, call.wants_binary(t.name))
        if blob is not None:
            params["binary_data_size"] = len(blob)
            blobs.append(blob)
        else:
            entry["data"] = data
        if params:
            entry["parameters"] = params
        outputs.append(entry)
    head = json.dumps({"model_name": resp.model_name, "model_version": resp.model_version, "id": resp.id,
                       "outputs": outputs}).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


def model_metadata_json(meta: v2.ModelMetadataResponse) -> dict[str, Any]:
    """As the REST protocol writes it (proto3 JSON would write the int64 shapes as strings)."""
    def tensors(ts: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts]
    return {"name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
            "inputs": tensors(meta.inputs), "outputs": tensors(meta.outputs)}


def server_metadata_json(meta: v2.ServerMetadataResponse) -> dict[str, Any]:
    return {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)}
