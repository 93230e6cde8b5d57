"""The Open Inference Protocol (KServe V2) on a real kws server, asked by the client users have: NVIDIA's
tritonclient (HTTP binary, HTTP JSON and gRPC; WAV and features inputs), plain and with TLS + token, on 100
test clips whose labels must be kws.v1 Predict's; and the bad-input corpus of tests/v2_bad_inputs.py over
REST and gRPC, each a 4xx / INVALID_ARGUMENT / NOT_FOUND with a message, the server serving afterwards.

tritonclient pins protobuf < 7, so it runs in .venv-triton (``make venv-triton``, from
requirements/triton-client.txt; run here, it builds the venv when missing), as a subprocess running
tests/support/triton_client_check.py. The gRPC side is the server's own: inference.GRPCInferenceService
beside kws.v1.KeywordSpotting.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

import v2_bad_inputs
from kws_rpc.audio.wav import decode_wav, encode_wav
from kws_rpc.errors import InvalidInput, UnknownModel
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.proto.inference import grpc_service_pb2 as v2
from kws_rpc.proto.inference import grpc_service_pb2_grpc as v2_grpc
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.proto.kws.v1 import kws_pb2_grpc as pb_grpc
from kws_rpc.security.auth import AuthConfig, TokenStore
from kws_rpc.security.certs import make_dev_pki
from kws_rpc.security.tls import ServerTls
from kws_rpc.serving.gateway import GatewayConfig, GatewayServer
from kws_rpc.serving.server import ServerConfig, ServerHandle, serve
from kws_rpc.serving.v2_servicer import SERVICE
from kws_rpc.wire import v2 as handlers

REPO = Path(__file__).resolve().parent.parent
TRITON_VENV = REPO / ".venv-triton"
TRITON_LOCK = REPO / "requirements" / "triton-client.txt"
CHECK = REPO / "tests" / "support" / "triton_client_check.py"
CLIPS = 100
TOKEN = "v2-token-0123456789abcdef"
OFFLINE = ("Could not fetch", "NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
           "No matching distribution", "Connection refused", "ProxyError")
REFUSED_HTTP = {400, 404, 413, 422}
REFUSED_GRPC = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


@pytest.fixture(scope="session")
def triton_python() -> Path:
    """.venv-triton's python; ``make venv-triton`` builds the venv from its lock when it is missing or older
    than the lock (pip --require-hashes --no-deps)."""
    r = subprocess.run(["make", "-s", "venv-triton"], cwd=REPO, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        if any(word in r.stdout + r.stderr for word in OFFLINE):
            pytest.skip(f"the package registry is unreachable, so .venv-triton cannot be built: {r.stderr[-300:]}")
        pytest.fail(f"make venv-triton could not install {TRITON_LOCK.name}:\n{r.stderr[-2000:]}")
    return TRITON_VENV / "bin" / "python"


@pytest.fixture(scope="module")
def server(served_model_path: Path) -> Iterator[ServerHandle]:
    handle = serve(ServerConfig(models=(served_model_path,), gateway_port=0, max_delay_ms=2, log_level="WARNING"))
    yield handle
    handle.stop(grace=1)


@pytest.fixture(scope="module")
def model(served_model_path: Path) -> KwsModel:
    return KwsModel(served_model_path)


@pytest.fixture(scope="module")
def clips(test_audio: tuple[np.ndarray, np.ndarray, list[str]], model: KwsModel,
          tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[bytes]]:
    """CLIPS test clips spread over the split: a folder of WAV files, their features (.npy), the WAVs."""
    audio, _, _ = test_audio
    chosen = audio[:: len(audio) // CLIPS][:CLIPS]
    folder = tmp_path_factory.mktemp("v2clips")
    wavs = [encode_wav(a, model.feature_config.sample_rate) for a in chosen]
    for i, w in enumerate(wavs):
        (folder / f"{i:03d}.wav").write_bytes(w)
    np.save(folder / "features.npy", np.stack([model.features(*decode_wav(w)).reshape(model.card.feature.shape) for w in wavs]))
    return folder, folder / "features.npy", wavs


def v1_labels(target: str, wavs: list[bytes], credentials: grpc.ChannelCredentials | None = None,
              token: str | None = None) -> list[str]:
    """What kws.v1 Predict answers for each clip."""
    md = (("authorization", f"Bearer {token}"),) if token else None
    with (grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)) as ch:
        stub = pb_grpc.KeywordSpottingStub(ch)
        return [stub.Predict(pb.PredictRequest(audio=pb.Audio(wav=w)), timeout=20, metadata=md).prediction.label
                for w in wavs]


def run_check(python: Path, http: str, grpc_target: str, model: KwsModel, clips: tuple[Path, Path, list[bytes]],
              *extra: str) -> dict[str, Any]:
    folder, features, _ = clips
    r = subprocess.run([str(python), str(CHECK), "--http", http, "--grpc", grpc_target, "--model", model.name,
                        "--clips", str(folder), "--features", str(features), *extra],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout)


def check_answers(out: dict[str, Any], model: KwsModel, expected: list[str]) -> None:
    assert out["http_live"] and out["http_ready"] and out["http_model_ready"]
    assert out["grpc_live"] and out["grpc_ready"] and out["grpc_model_ready"]
    for meta in (out["http_server_metadata"], out["grpc_server_metadata"]):
        assert meta["name"] == "kws" and "binary_tensor_data" in meta["extensions"]
    frames, bins = model.card.feature.shape
    http_meta = out["http_model_metadata"]
    assert http_meta["versions"] == [model.card.version]
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in http_meta["inputs"]} == {
        ("features", "FP32", (-1, frames, bins)), ("wav", "BYTES", (-1,))}
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in http_meta["outputs"]} == {
        ("probabilities", "FP32", (-1, len(model.labels))), ("label", "BYTES", (-1,))}
    grpc_meta = out["grpc_model_metadata"]  # proto3 JSON: int64 shapes as strings
    assert [(t["name"], [int(d) for d in t["shape"]]) for t in grpc_meta["inputs"]] == \
        [(t["name"], t["shape"]) for t in http_meta["inputs"]]
    assert out["columns"] == model.labels
    assert set(out["labels"]) == {"http-binary-wav", "http-json-wav", "http-binary-features", "http-json-features",
                                  "grpc-wav", "grpc-features"}
    for way, labels in out["labels"].items():
        wrong = [i for i, (a, b) in enumerate(zip(labels, expected)) if a != b]
        assert len(labels) == CLIPS and not wrong, f"{way}: clips {wrong} differ from kws.v1 Predict's labels"


def test_tritonclient_http_and_grpc(triton_python: Path, server: ServerHandle, model: KwsModel,
                                    clips: tuple[Path, Path, list[bytes]]) -> None:
    expected = v1_labels(server.target, clips[2])
    assert server.gateway is not None
    out = run_check(triton_python, server.gateway.url.removeprefix("http://"), server.target, model, clips)
    check_answers(out, model, expected)
    # 4 ways over REST (through the in-process backend) and 2 over gRPC, 10 clips a request
    ok = server.metrics.registry.get_sample_value("kws_requests_total", {"method": "ModelInfer", "code": "OK"})
    assert ok == 6 * CLIPS // 10, ok


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = make_dev_pki(tmp_path_factory.mktemp("v2pki"))
    tokens = paths["ca.pem"].parent / "tokens.txt"
    tokens.write_text(f"v2:{TOKEN}\n")
    return {**paths, "tokens": tokens}


@pytest.fixture(scope="module")
def secure_server(pki: dict[str, Path], served_model_path: Path) -> Iterator[ServerHandle]:
    handle = serve(ServerConfig(models=(served_model_path,), gateway_port=0, max_delay_ms=2, log_level="WARNING",
                                tls=ServerTls(pki["server.pem"], pki["server.key"]),
                                auth=AuthConfig(TokenStore.load(pki["tokens"]))))
    yield handle
    handle.stop(grace=1)


def test_tritonclient_over_tls_with_a_token(triton_python: Path, secure_server: ServerHandle, pki: dict[str, Path],
                                            model: KwsModel, clips: tuple[Path, Path, list[bytes]]) -> None:
    handle = secure_server
    assert handle.gateway is not None
    url = handle.gateway.url
    credentials = grpc.ssl_channel_credentials(pki["ca.pem"].read_bytes())
    expected = v1_labels(handle.target, clips[2], credentials, TOKEN)
    out = run_check(triton_python, url.removeprefix("https://"), handle.target, model, clips,
                    "--ca", str(pki["ca.pem"]), "--token", TOKEN)
    check_answers(out, model, expected)
    # the probes' routes are open; the others need the token, and refuse in the V2 error shape
    assert requests.get(url + "/v2/health/ready", verify=pki["ca.pem"], timeout=10).status_code == 200
    r = requests.get(url + f"/v2/models/{model.name}", verify=pki["ca.pem"], timeout=10)
    assert r.status_code == 401 and isinstance(r.json()["error"], str), r.text
    with grpc.secure_channel(handle.target, credentials) as ch:  # gRPC: V2 needs the token as kws.v1 does
        stub = v2_grpc.GRPCInferenceServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelMetadata(v2.ModelMetadataRequest(name=model.name), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        md = (("authorization", f"Bearer {TOKEN}"),)
        assert stub.ModelMetadata(v2.ModelMetadataRequest(name=model.name), timeout=10, metadata=md).name == model.name


def test_readme_recipe_runs(triton_python: Path, server: ServerHandle, model: KwsModel) -> None:
    """The README's curl and tritonclient lines (the blocks after <!-- v2-recipe -->), verbatim but for the
    port (and the model, when KWS_TEST_MODEL names another)."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    text = (REPO / "README.md").read_text()
    shell, python = re.findall(r"```(?:bash|python)\n(.*?)```", text[text.index("<!-- v2-recipe -->"):], re.S)[:2]
    assert server.gateway is not None
    here = {"localhost:8080": server.gateway.url.removeprefix("http://"), "big_int8": model.name}
    for old, new in here.items():
        shell, python = shell.replace(old, new), python.replace(old, new)
    r = subprocess.run(["bash", "-c", shell], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["yes"]}], r.stdout + r.stderr
    r = subprocess.run([str(triton_python), "-c", python], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[b'yes']", r.stdout + r.stderr


# --- the transport-free handlers ---------------------------------------------------------------------------

def test_handlers_typed_contents_give_typed_outputs(server: ServerHandle, model: KwsModel,
                                                    clip_wavs: dict[str, bytes]) -> None:
    """Contents in, contents out (raw in, raw out: the tritonclient runs above); batches of several clips."""
    words = ["yes", "no", "up"]
    req = v2.ModelInferRequest(model_name=model.name, id="typed", inputs=[v2.ModelInferRequest.InferInputTensor(
        name="wav", datatype="BYTES", shape=[3, 1], contents=v2.InferTensorContents(bytes_contents=[clip_wavs[w] for w in words]))])
    reply = handlers.infer(server.core, req)
    assert reply.id == "typed" and not reply.raw_output_contents
    probs, label = reply.outputs
    assert list(probs.shape) == [3, len(model.labels)] and len(probs.contents.fp32_contents) == 3 * len(model.labels)
    assert [b.decode() for b in label.contents.bytes_contents] == words
    feats = np.stack([model.features(*decode_wav(clip_wavs[w])).reshape(model.card.feature.shape) for w in words])
    req = v2.ModelInferRequest(model_name=model.name, model_version=model.card.version,
                               outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name="label")],
                               inputs=[v2.ModelInferRequest.InferInputTensor(name="features", datatype="FP32",
                                                                             shape=list(feats.shape))],
                               raw_input_contents=[feats.astype("<f4").tobytes()])
    reply = handlers.infer(server.core, req)
    assert [o.name for o in reply.outputs] == ["label"] and handlers.split_bytes(reply.raw_output_contents[0], "label") \
        == [w.encode() for w in words]
    with pytest.raises(UnknownModel):
        handlers.model_metadata(server.core, v2.ModelMetadataRequest(name=model.name, version="0"))
    with pytest.raises(InvalidInput, match="clip 1"):
        req = v2.ModelInferRequest(model_name=model.name, inputs=[v2.ModelInferRequest.InferInputTensor(
            name="wav", datatype="BYTES", shape=[2], contents=v2.InferTensorContents(bytes_contents=[clip_wavs["go"], b"x"]))])
        handlers.infer(server.core, req)


# --- bad inputs ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def remote_gateway(server: ServerHandle) -> Iterator[GatewayServer]:
    """kws-gateway on its own: its V2 routes reach the server's V2 servicer over gRPC (grpc_backend.Backend)."""
    gateway = GatewayServer(GatewayConfig(server.target, port=0, log_level="warning"), grace_s=1)
    yield gateway
    gateway.stop()


@pytest.mark.parametrize("backend", ["in-process", "grpc"])
def test_bad_rest_requests_are_4xx_with_a_message(backend: str, request: pytest.FixtureRequest, model: KwsModel,
                                                  clip_wavs: dict[str, bytes]) -> None:
    """Through the co-hosted gateway (in-process backend) and a standalone one (gRPC backend): the domain
    error crosses gRPC in the kws-error trailer and keeps its HTTP status."""
    if backend == "grpc":
        url = request.getfixturevalue("remote_gateway").url
    else:
        gateway = request.getfixturevalue("server").gateway
        assert gateway is not None
        url = gateway.url
    cases = v2_bad_inputs.rest_cases(model.name, clip_wavs["yes"], model.card.feature.shape)
    assert len(cases) >= 40
    wrong = {}
    with requests.Session() as s:
        for name, (method, path, body, headers) in cases.items():
            r = s.request(method, url + path, data=body, headers=headers, timeout=30)
            try:
                message = r.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = None
            if r.status_code not in REFUSED_HTTP or not isinstance(message, str) or not message:
                wrong[name] = (r.status_code, r.text[:300])
    assert not wrong, wrong
    good = {"id": "after", "inputs": [{"name": "wav", "shape": [1], "datatype": "BYTES",
                                       "data": [base64.b64encode(clip_wavs["yes"]).decode()]}]}
    r = requests.post(url + f"/v2/models/{model.name}/infer", json=good, timeout=10)
    assert r.status_code == 200 and r.json()["id"] == "after" and r.json()["outputs"][1]["data"] == ["yes"], r.text
    r = requests.get(url + f"/v2/models/{model.name}/versions/{model.card.version}", timeout=10)
    assert r.status_code == 200 and r.json()["inputs"][0]["shape"] == [-1, *model.card.feature.shape], r.text


def test_bad_grpc_requests_are_invalid_argument_or_not_found(server: ServerHandle, model: KwsModel,
                                                             clip_wavs: dict[str, bytes]) -> None:
    cases = v2_bad_inputs.grpc_cases(model.name, clip_wavs["yes"], model.card.feature.shape)
    assert len(cases) >= 30
    wrong = {}
    with grpc.insecure_channel(server.target) as ch:
        for name, (method, data) in cases.items():
            try:
                ch.unary_unary(f"/{SERVICE}/{method}")(data, timeout=30)
                wrong[name] = "OK"
            except grpc.RpcError as e:
                if e.code() not in REFUSED_GRPC or not e.details():
                    wrong[name] = (e.code(), e.details())
                elif e.code() != grpc.StatusCode.INTERNAL:
                    assert dict(e.trailing_metadata() or ())["kws-error"] in ("InvalidInput", "UnknownModel",
                                                                             "PayloadTooLarge", "ModelMismatch")
        assert not wrong, wrong
        stub = v2_grpc.GRPCInferenceServiceStub(ch)
        req = v2.ModelInferRequest(model_name=model.name, inputs=[v2.ModelInferRequest.InferInputTensor(
            name="wav", datatype="BYTES", shape=[1])], raw_input_contents=[handlers.join_bytes([clip_wavs["no"]])])
        reply = stub.ModelInfer(req, timeout=10)
        assert handlers.split_bytes(reply.raw_output_contents[1], "label") == [b"no"]
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_batching_server(served_model_path: Path, model: KwsModel, clip_wavs: dict[str, bytes]) -> None:
    """With the micro-batcher on, V2 calls wait for their batch off the event loop, as kws.v1's do."""
    handle = serve(ServerConfig(models=(served_model_path,), gateway_port=0, max_batch_size=8, max_delay_ms=2,
                                log_level="WARNING"))
    try:
        words = ["down", "left", "stop"]
        req = v2.ModelInferRequest(model_name=model.name, inputs=[v2.ModelInferRequest.InferInputTensor(
            name="wav", datatype="BYTES", shape=[3])], raw_input_contents=[handlers.join_bytes([clip_wavs[w] for w in words])])
        with grpc.insecure_channel(handle.target) as ch:
            reply = v2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=10)
        assert handlers.split_bytes(reply.raw_output_contents[1], "label") == [w.encode() for w in words]
        assert handle.gateway is not None
        body = {"inputs": [{"name": "wav", "shape": [3], "datatype": "BYTES",
                            "data": [base64.b64encode(clip_wavs[w]).decode() for w in words]}]}
        r = requests.post(handle.gateway.url + f"/v2/models/{model.name}/infer", json=body, timeout=10)
        assert r.status_code == 200 and r.json()["outputs"][1]["data"] == words, r.text
    finally:
        handle.stop(grace=1)
