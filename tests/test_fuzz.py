"""Hypothesis fuzzing of one in-process server (gRPC + gateway), 6,000 cases in all: random bytes as a
PredictRequest body, random PredictRequests, bit-flipped valid ones, random JSON to ``/`` and to
``/v1/predict``. Each answer must be OK (finite probabilities) or a 4xx / INVALID_ARGUMENT / NOT_FOUND:
never a 5xx, INTERNAL or UNKNOWN, and nothing logged at ERROR. Runs are reproducible (derandomize, no
example database), each case has a deadline (its call's timeout), and the module takes well under two
minutes. The last test checks the server still answers and its RSS stayed within 50 MB."""

from __future__ import annotations

import base64
import collections
import dataclasses
import json
import logging
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from kws_rpc.model.kws_model import KwsModel
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.serving.server import ServerConfig, ServerHandle, serve
from kws_rpc.wire.codec import config_to_proto, tensor_to_proto
from kws_rpc.wire.service import SERVICE

CASE_TIMEOUT_S = 10.0
OK_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
OK_HTTP = {200, 400, 404, 413, 422}
OUTCOMES: collections.Counter[tuple[str, str]] = collections.Counter()
# Hypothesis caches the constants it finds in our code; not in the checkout (no example database either).
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "kws-hypothesis")


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=list(HealthCheck))


class ErrorLog(logging.Handler):
    """Records at ERROR and above from the server's loggers (an unexpected exception is logged there)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def errors() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    loggers = [logging.getLogger(n) for n in ("kws_rpc", "uvicorn", "grpc")]
    for lg in loggers:
        lg.addHandler(handler)
    yield handler
    for lg in loggers:
        lg.removeHandler(handler)


@pytest.fixture(scope="module")
def server(served_model_path: Path, errors: ErrorLog) -> Iterator[ServerHandle]:
    handle = serve(ServerConfig(models=(served_model_path,), gateway_port=0, max_delay_ms=2))
    yield handle
    handle.stop(grace=1)


@pytest.fixture(scope="module")
def channel(server: ServerHandle) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as ch:
        yield ch


@pytest.fixture(scope="module")
def http(server: ServerHandle) -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@pytest.fixture(scope="module")
def model(served_model_path: Path) -> KwsModel:
    return KwsModel(served_model_path)


@pytest.fixture(scope="module")
def baseline_rss(channel: grpc.Channel, valid: dict[str, bytes]) -> float:
    raw = channel.unary_unary(f"/{SERVICE}/Predict")
    for _ in range(10):
        for data in valid.values():
            pb.PredictResponse.FromString(raw(data, timeout=CASE_TIMEOUT_S))
    return psutil.Process().memory_info().rss / 2**20


@pytest.fixture(scope="module")
def valid(clip_wavs: dict[str, bytes], model: KwsModel) -> dict[str, bytes]:
    """Serialized valid PredictRequests of every input kind: the seeds for bit flips."""
    from kws_rpc.audio.wav import decode_wav

    wav = clip_wavs["go"]
    audio, rate = decode_wav(wav)
    feats = model.features(audio, rate)
    cfg = config_to_proto(model.feature_config)
    reqs = {
        "wav": pb.PredictRequest(request_id="v", audio=pb.Audio(wav=wav)),
        "pcm16": pb.PredictRequest(request_id="v", audio=pb.Audio(sample_rate=rate, pcm16=wav[44:])),
        "f32": pb.PredictRequest(features=pb.Features(tensor=tensor_to_proto(feats), config=cfg)),
        "f16": pb.PredictRequest(features=pb.Features(tensor=tensor_to_proto(feats, pb.FLOAT16))),
        "i8": pb.PredictRequest(features=pb.Features(tensor=tensor_to_proto(feats, pb.INT8))),
        "q5z": pb.PredictRequest(features=pb.Features(tensor=tensor_to_proto(
            feats, pb.INT8, 32, pb.TENSOR_ENCODING_DIFF2_ZLIB))),
    }
    return {k: r.SerializeToString() for k, r in reqs.items()}


def send_grpc(channel: grpc.Channel, data: bytes, kind: str) -> None:
    try:
        reply = pb.PredictResponse.FromString(channel.unary_unary(f"/{SERVICE}/Predict")(data, timeout=CASE_TIMEOUT_S))
    except grpc.RpcError as e:
        OUTCOMES[(kind, e.code().name)] += 1
        assert e.code() in OK_CODES, f"{e.code().name}: {e.details()}"
        assert e.details(), e.code().name
        return
    OUTCOMES[(kind, "OK")] += 1
    assert np.all(np.isfinite(reply.prediction.probabilities)) and reply.prediction.label, reply


def send_http(http: requests.Session, url: str, body: bytes, kind: str) -> None:
    r = http.request("PUT" if url.endswith("/") else "POST", url, data=body, timeout=CASE_TIMEOUT_S)
    OUTCOMES[(kind, str(r.status_code))] += 1
    assert r.status_code in OK_HTTP, f"{r.status_code}: {r.text[:300]}"
    doc = r.json()
    if r.status_code == 200:
        probs = list(doc["probabilities"].values()) if "probabilities" in doc else doc["prediction"]["probabilities"]
        assert np.all(np.isfinite(probs)), doc
    else:
        assert doc["error"]["message"], doc


# --- strategies ---------------------------------------------------------------------------------------
u32 = st.integers(0, 2**32 - 1)
rates = st.sampled_from([0, 1, 7999, 8000, 16000, 44100, 48000, 48001]) | u32
floats = st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def wavs(draw: st.DrawFn) -> bytes:
    """Mostly well-formed RIFF files whose header fields and sizes are drawn: the lies a parser meets."""
    pcm = draw(st.binary(max_size=3000))
    fields = [draw(st.sampled_from([1, 3, 0xFFFE]) | st.integers(0, 0xFFFF)),  # format tag
              draw(st.sampled_from([1, 2]) | st.integers(0, 0xFFFF)),  # channels
              draw(rates), draw(u32), draw(st.sampled_from([2]) | st.integers(0, 0xFFFF)),
              draw(st.sampled_from([16]) | st.integers(0, 0xFFFF))]
    fmt = struct.pack("<HHIIHH", *fields)
    fmt_size = draw(st.sampled_from([16]) | u32)
    data_size = draw(st.sampled_from([len(pcm)]) | u32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", fmt_size) + fmt + b"data" + struct.pack("<I", data_size) + pcm
    riff = draw(st.sampled_from([len(body)]) | u32)
    return b"RIFF" + struct.pack("<I", riff) + body


@st.composite
def tensors(draw: st.DrawFn) -> pb.Tensor:
    shape = draw(st.lists(st.sampled_from([1, 2, 40, 49]) | u32, max_size=6))
    dtype = draw(st.sampled_from([pb.FLOAT32, pb.FLOAT16, pb.INT8]) | st.integers(0, 10))
    count = int(np.prod(shape, dtype=np.float64)) if shape else 0
    size = {pb.FLOAT32: 4, pb.FLOAT16: 2}.get(dtype, 1) * count
    if size <= 16384 and draw(st.booleans()):  # the right byte count, values of any size, maybe one odd value
        x = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).normal(size=count)
        x *= draw(st.sampled_from([1.0, 10.0, 1e4, 1e30]))
        if count and draw(st.booleans()):
            x[draw(st.integers(0, count - 1))] = draw(floats)
        with np.errstate(over="ignore", invalid="ignore"):
            data = x.astype({pb.FLOAT16: "<f2", pb.INT8: "i1"}.get(dtype, "<f4")).tobytes()
    else:
        data = draw(st.binary(max_size=4096))
    return pb.Tensor(dtype=dtype, shape=shape, data=data, scale=draw(floats),
                     zero_point=draw(st.integers(-2**31, 2**31 - 1)), encoding=draw(st.integers(0, 3)))


@st.composite
def predict_requests(draw: st.DrawFn, cfg: pb.FeatureConfig) -> pb.PredictRequest:
    req = pb.PredictRequest(request_id=draw(st.text(max_size=20)),
                            model=draw(st.sampled_from(["", "big"]) | st.text(max_size=30)))
    kind = draw(st.sampled_from(["wav", "wav bytes", "pcm16", "features", "none"]))
    if kind == "wav":
        req.audio.wav = draw(wavs())
    elif kind == "wav bytes":
        req.audio.wav = draw(st.binary(max_size=1000))
    elif kind == "pcm16":
        req.audio.pcm16 = draw(st.binary(max_size=8000))
        req.audio.sample_rate = draw(rates)
    elif kind == "features":
        req.features.tensor.CopyFrom(draw(tensors()))
        if draw(st.booleans()):
            c = pb.FeatureConfig()
            c.CopyFrom(cfg)
            field = draw(st.sampled_from([f.name for f in c.DESCRIPTOR.fields]))
            setattr(c, field, type(getattr(c, field))(draw(st.integers(0, 2**16))))
            req.features.config.CopyFrom(c)
    return req


@st.composite
def flipped(draw: st.DrawFn, seeds: dict[str, bytes]) -> bytes:
    b = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["bit", "byte", "truncate", "insert"]))
        i = draw(st.integers(0, max(len(b) - 1, 0)))
        if op == "bit" and b:
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and b:
            b[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del b[i:]
        else:
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(b)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


@st.composite
def spec_bodies(draw: st.DrawFn, wav: bytes) -> bytes:
    kind = draw(st.sampled_from(["senml", "json", "bytes", "deep"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "deep":
        return draw(st.sampled_from(["[", "{\"a\":", "[{\"e\":"])) * draw(st.integers(1, 5000))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    vd = draw(st.sampled_from([base64.b64encode(wav).decode()]) | st.builds(
        lambda w: base64.b64encode(w).decode(), wavs()) | st.text(max_size=40) | json_values)
    record = {"n": draw(st.sampled_from(["audio"]) | st.text(max_size=5)), "vd": vd}
    doc: dict[str, Any] = {"e": [record] if draw(st.booleans()) else draw(json_values)}
    for key in ("bn", "bt"):
        if draw(st.booleans()):
            doc[key] = draw(json_values | st.integers(-2**80, 2**80) | st.sampled_from([float("nan"), 1e308]))
    return json.dumps(doc).encode()


@st.composite
def v1_bodies(draw: st.DrawFn, cfg: pb.FeatureConfig) -> bytes:
    if draw(st.booleans()):
        from google.protobuf import json_format

        doc = json_format.MessageToDict(draw(predict_requests(cfg)))
        if draw(st.booleans()) and doc:  # replace one value by arbitrary JSON
            key = draw(st.sampled_from(sorted(doc)))
            doc[key] = draw(json_values)
        return json.dumps(doc).encode()
    return json.dumps(draw(json_values)).encode() if draw(st.booleans()) else draw(st.binary(max_size=200))


# --- campaigns ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Target:
    """Everything a campaign sends to: one server, measured (baseline_rss) before the first case."""

    channel: grpc.Channel
    http: requests.Session
    gateway_url: str
    model: KwsModel
    valid: dict[str, bytes]
    wav: bytes


@pytest.fixture(scope="module")
def target(server: ServerHandle, channel: grpc.Channel, http: requests.Session, model: KwsModel,
           valid: dict[str, bytes], clip_wavs: dict[str, bytes], baseline_rss: float) -> Target:
    assert server.gateway is not None
    return Target(channel, http, server.gateway.url, model, valid, clip_wavs["go"])


def _random_bytes(t: Target) -> None:
    @fuzz(1500)
    @given(st.binary(max_size=2048))
    def case(data: bytes) -> None:
        send_grpc(t.channel, data, "grpc random bytes")
    case()


def _random_requests(t: Target) -> None:
    @fuzz(1500)
    @given(predict_requests(config_to_proto(t.model.feature_config)))
    def case(req: pb.PredictRequest) -> None:
        send_grpc(t.channel, req.SerializeToString(), "grpc random PredictRequest")
    case()


def _flipped_requests(t: Target) -> None:
    @fuzz(1500)
    @given(flipped(t.valid))
    def case(data: bytes) -> None:
        send_grpc(t.channel, data, "grpc bit-flipped PredictRequest")
    case()


def _random_spec_bodies(t: Target) -> None:
    @fuzz(800)
    @given(spec_bodies(t.wav))
    def case(body: bytes) -> None:
        send_http(t.http, t.gateway_url + "/", body, "REST / random JSON")
    case()


def _random_v1_bodies(t: Target) -> None:
    @fuzz(800)
    @given(v1_bodies(config_to_proto(t.model.feature_config)))
    def case(body: bytes) -> None:
        send_http(t.http, t.gateway_url + "/v1/predict", body, "REST /v1/predict random JSON")
    case()


CAMPAIGNS = {"random bytes": _random_bytes, "random requests": _random_requests,
             "flipped requests": _flipped_requests, "random spec bodies": _random_spec_bodies,
             "random v1 bodies": _random_v1_bodies}
DONE: set[str] = set()  # campaigns run in this module (the survival check runs the others itself)


def campaign(name: str, t: Target) -> None:
    CAMPAIGNS[name](t)
    DONE.add(name)


# --- tests --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CAMPAIGNS))
def test_campaign(name: str, target: Target) -> None:
    campaign(name, target)


def test_server_survives_fuzzing(target: Target, errors: ErrorLog, baseline_rss: float) -> None:
    """After every campaign (run here those not run yet, so this test also stands alone)."""
    for name in CAMPAIGNS:
        if name not in DONE:
            campaign(name, target)
    send_grpc(target.channel, target.valid["wav"], "after")
    assert OUTCOMES[("after", "OK")] >= 1
    rss = psutil.Process().memory_info().rss / 2**20
    total = sum(n for (kind, _), n in OUTCOMES.items() if kind != "after")
    print(f"\nfuzz: {total} cases:", dict(sorted(OUTCOMES.items())),
          f"\nRSS {baseline_rss:.0f} MB warmed up -> {rss:.0f} MB")
    assert total >= 5000
    assert not [r.getMessage()[:300] for r in errors.records]
    assert rss - baseline_rss < 50, f"RSS grew from {baseline_rss:.0f} to {rss:.0f} MB"
