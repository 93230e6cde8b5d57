"""The Open Inference Protocol (KServe "V2", Triton's) on an ``InferenceCore``: V2 messages in, V2 messages
out, domain errors raised. Transport-free like ``kws_rpc.wire.handlers``: the gRPC servicer
(``kws_rpc.serving.v2_servicer``) and the REST routes (``kws_rpc.serving.v2_rest``, through
``kws_rpc.wire.v2_http``) both call these functions.

Every model takes one of two inputs and gives two outputs (docs/protocol.md has the table):
- ``features`` FP32 [-1, frames, bins]: log-mel features as the model card computes them;
- ``wav`` BYTES [-1] (or [-1, 1]): each element one WAV file (16-bit PCM or IMA ADPCM, 8-48 kHz);
- ``probabilities`` FP32 [-1, labels], its ``labels`` parameter naming the columns (comma-separated);
- ``label`` BYTES [-1]: the top label of each clip, as kws.v1's Predict names it.
A batch of several clips runs clip by clip on the core (its micro-batcher, when on, groups them with
other requests). Raw inputs get raw outputs, as KServe answers (Triton always answers raw).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from importlib import metadata

import numpy as np

from kws_rpc.audio.wav import decode_wav
from kws_rpc.errors import InvalidInput, UnknownModel, quote
from kws_rpc.model.core import InferenceCore, Result
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.proto.inference import grpc_service_pb2 as v2
from kws_rpc.wire.codec import prediction_to_proto
from kws_rpc.wire.handlers import MAX_REQUEST_ID_CHARS

FEATURES, WAV = "features", "wav"
PROBABILITIES, LABEL = "probabilities", "label"
INPUT_TYPES = {FEATURES: "FP32", WAV: "BYTES"}
OUTPUTS = (PROBABILITIES, LABEL)
LABELS_PARAMETER = "labels"  # on the probabilities output: its column names, comma-separated
EXTENSIONS = ("binary_tensor_data",)  # of Triton's protocol extensions, the ones kws speaks (REST)
PLATFORM = "tflite"
MAX_BATCH = 128  # clips per request: each runs the model once
FP32_BYTES = 4

InputTensor = v2.ModelInferRequest.InferInputTensor
OutputTensor = v2.ModelInferResponse.InferOutputTensor


def server_metadata() -> v2.ServerMetadataResponse:
    try:
        version = metadata.version("kws")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        version = "unknown"
    return v2.ServerMetadataResponse(name="kws", version=version, extensions=EXTENSIONS)


def model_of(core: InferenceCore, name: str, version: str = "") -> KwsModel:
    """The served model ``name`` at ``version`` (empty: the one served); UnknownModel otherwise."""
    if not name:
        raise UnknownModel(f"no model name given: name one of {sorted(core.models)}")
    m = core.model(name)
    if version and version != m.card.version:
        raise UnknownModel(f"model {m.name} has no version {quote(version)}: this server has version "
                           f"{m.card.version!r} (or leave the version out)")
    return m


def model_metadata(core: InferenceCore, req: v2.ModelMetadataRequest) -> v2.ModelMetadataResponse:
    card = model_of(core, req.name, req.version).card
    tensor = v2.ModelMetadataResponse.TensorMetadata
    return v2.ModelMetadataResponse(
        name=card.name, versions=[card.version], platform=PLATFORM,
        inputs=[tensor(name=FEATURES, datatype="FP32", shape=[-1, *card.feature.shape]),
                tensor(name=WAV, datatype="BYTES", shape=[-1])],
        outputs=[tensor(name=PROBABILITIES, datatype="FP32", shape=[-1, len(card.labels)]),
                 tensor(name=LABEL, datatype="BYTES", shape=[-1])])


def model_ready(core: InferenceCore, req: v2.ModelReadyRequest, serving: bool) -> v2.ModelReadyResponse:
    model_of(core, req.name, req.version)
    return v2.ModelReadyResponse(ready=serving)


def check_datatype(name: str, datatype: str) -> None:
    if name not in INPUT_TYPES:
        raise InvalidInput(f"unknown input {quote(name)}: kws models take {FEATURES!r} (FP32) or {WAV!r} (BYTES)")
    if datatype != INPUT_TYPES[name]:
        raise InvalidInput(f"input {name} must be {INPUT_TYPES[name]}, not {quote(datatype)}")


def element_count(name: str, shape: Sequence[int]) -> int:
    """The elements a shape holds (no allocation: a declared [10**9, 10**9] is only a number here)."""
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name}: shape {list(shape)} has a negative dimension; a request's shape is exact")
    return math.prod(shape)


def split_bytes(raw: bytes, name: str) -> list[bytes]:
    """BYTES raw contents: each element a 4-byte little-endian length, then that many bytes."""
    out, pos = [], 0
    while pos < len(raw):
        if len(out) >= MAX_BATCH:
            raise InvalidInput(f"input {name}: more than {MAX_BATCH} BYTES elements in its raw contents")
        if pos + 4 > len(raw):
            raise InvalidInput(f"input {name}: BYTES element {len(out)} has a truncated length prefix at byte {pos} "
                               "(each element is a 4-byte little-endian length, then its bytes)")
        (n,) = struct.unpack_from("<I", raw, pos)
        if n > len(raw) - pos - 4:
            raise InvalidInput(f"input {name}: BYTES element {len(out)} declares {n} bytes, but only "
                               f"{len(raw) - pos - 4} follow its length prefix")
        out.append(raw[pos + 4: pos + 4 + n])
        pos += 4 + n
    return out


def join_bytes(elements: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _features(m: KwsModel, t: InputTensor, raw: bytes | None) -> list[np.ndarray]:
    shape, want = list(t.shape), list(m.card.feature.shape)
    if len(shape) != 3 or shape[1:] != want or shape[0] < 1:
        raise InvalidInput(f"input features: shape {shape} must be [N, {want[0]}, {want[1]}] (N clips of "
                           f"model {m.name}'s features, 1 <= N <= {MAX_BATCH})")
    if shape[0] > MAX_BATCH:
        raise InvalidInput(f"input features: {shape[0]} clips; at most {MAX_BATCH} per request")
    count = element_count(FEATURES, shape)
    if raw is not None:
        if len(raw) != count * FP32_BYTES:
            raise InvalidInput(f"input features: shape {shape} holds {count} FP32 values ({count * FP32_BYTES} "
                               f"bytes), but its raw contents have {len(raw)} bytes")
        x = np.frombuffer(raw, dtype="<f4")
    else:
        c = t.contents
        if len(c.fp32_contents) != count or c.ByteSize() != v2.InferTensorContents(fp32_contents=c.fp32_contents).ByteSize():
            raise InvalidInput(f"input features: shape {shape} holds {count} FP32 values; contents.fp32_contents "
                               f"has {len(c.fp32_contents)} (and no other contents field may be set)")
        x = np.asarray(c.fp32_contents, dtype=np.float32)
    return list(x.reshape(shape).astype(np.float32)[:, None])


def _wavs(t: InputTensor, raw: bytes | None) -> list[bytes]:
    shape = list(t.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
        raise InvalidInput(f"input wav: shape {shape} must be [N] or [N, 1], one WAV file per element")
    if shape[0] > MAX_BATCH:
        raise InvalidInput(f"input wav: {shape[0]} clips; at most {MAX_BATCH} per request")
    count = element_count(WAV, shape)
    if raw is not None:
        elements = split_bytes(raw, WAV)
    else:
        c = t.contents
        elements = list(c.bytes_contents)
        if c.ByteSize() != v2.InferTensorContents(bytes_contents=elements).ByteSize():
            raise InvalidInput("input wav: BYTES contents go in contents.bytes_contents, and no other field")
    if len(elements) != count:
        raise InvalidInput(f"input wav: shape {shape} holds {count} elements, but {len(elements)} WAV files came")
    return elements


def _input(m: KwsModel, req: v2.ModelInferRequest) -> tuple[str, list[np.ndarray] | list[bytes]]:
    if not req.inputs:
        raise InvalidInput(f"the request has no input: send {FEATURES!r} (FP32) or {WAV!r} (BYTES)")
    names = [t.name for t in req.inputs]
    for t in req.inputs:
        check_datatype(t.name, t.datatype)
    if len(names) > 1:
        raise InvalidInput(f"inputs {', '.join(quote(n, 40) for n in names)}: send exactly one, {FEATURES!r} or {WAV!r}")
    t = req.inputs[0]
    raw = None
    if req.raw_input_contents:
        if len(req.raw_input_contents) != len(req.inputs):
            raise InvalidInput(f"{len(req.raw_input_contents)} raw_input_contents for {len(req.inputs)} input(s): "
                               "send one per input, in input order")
        if t.HasField("contents"):
            raise InvalidInput("an input has contents while raw_input_contents is set: use one or the other")
        raw = req.raw_input_contents[0]
    if t.name == FEATURES:
        return FEATURES, _features(m, t, raw)
    return WAV, _wavs(t, raw)


def _requested(req: v2.ModelInferRequest) -> list[str]:
    names = [o.name for o in req.outputs] or list(OUTPUTS)
    for o in req.outputs:
        if o.name not in OUTPUTS:
            raise InvalidInput(f"unknown output {quote(o.name)}: kws models give {list(OUTPUTS)}")
        if "classification" in o.parameters:
            raise InvalidInput("the classification extension is not supported: ask for the label output")
    if len(set(names)) != len(names):
        raise InvalidInput(f"outputs {names} name one output twice")
    return names


def infer(core: InferenceCore, req: v2.ModelInferRequest) -> v2.ModelInferResponse:
    """Validates a ModelInferRequest, runs its clips one by one on the core and answers the outputs asked."""
    m = model_of(core, req.model_name, req.model_version)
    if len(req.id) > MAX_REQUEST_ID_CHARS:
        raise InvalidInput(f"id {quote(req.id, 40)} is longer than {MAX_REQUEST_ID_CHARS} characters")
    outputs = _requested(req)
    kind, items = _input(m, req)
    results: list[Result] = []
    for i, item in enumerate(items):
        try:
            if kind == FEATURES:
                results.append(core.predict_features(item, m.name))  # type: ignore[arg-type]
            else:
                results.append(core.predict_audio(*decode_wav(item), m.name))  # type: ignore[arg-type]
        except InvalidInput as e:
            raise type(e)(f"input {kind}, clip {i}: {e}" if len(items) > 1 else f"input {kind}: {e}") from None
    return response(req, m, results, outputs, raw=bool(req.raw_input_contents))


def response(req: v2.ModelInferRequest, m: KwsModel, results: list[Result], outputs: list[str],
             raw: bool) -> v2.ModelInferResponse:
    probs = np.stack([r.probabilities for r in results]).astype("<f4")
    labels = [prediction_to_proto(r.probabilities, r.card).label.encode() for r in results]
    reply = v2.ModelInferResponse(model_name=m.name, model_version=m.card.version, id=req.id)
    for name in outputs:
        if name == PROBABILITIES:
            t = OutputTensor(name=name, datatype="FP32", shape=list(probs.shape),
                             parameters={LABELS_PARAMETER: v2.InferParameter(string_param=",".join(m.labels))})
            data = probs.tobytes()
            if not raw:
                t.contents.fp32_contents.extend(probs.ravel().tolist())
        else:
            t = OutputTensor(name=name, datatype="BYTES", shape=[len(labels)])
            data = join_bytes(labels)
            if not raw:
                t.contents.bytes_contents.extend(labels)
        reply.outputs.append(t)
        if raw:
            reply.raw_output_contents.append(data)
    return reply
