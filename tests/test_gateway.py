"""The REST gateway on loopback, forwarding to a real gRPC server: the reference client's exact body,
the proto3 JSON API, every bad input as a JSON 4xx, readiness, and 503 when gRPC is down."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from google.protobuf import json_format

from kws_rpc.audio.wav import decode_wav, encode_wav
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.serving.gateway import GatewayConfig, GatewayServer
from kws_rpc.serving.server import ServerConfig, ServerHandle, serve
from kws_rpc.wire.codec import config_to_proto, tensor_to_proto
from tests.support.network import free_port

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(served_model_path: Path) -> Iterator[ServerHandle]:
    handle = serve(ServerConfig(models=(served_model_path,), gateway_port=0, max_delay_ms=2))
    yield handle
    handle.stop(grace=1)


@pytest.fixture(scope="module")
def url(server: ServerHandle) -> str:
    assert server.gateway is not None
    return server.gateway.url


def senml(wav: bytes | str) -> dict:
    """The reference client's body."""
    vd = wav if isinstance(wav, str) else base64.b64encode(wav).decode()
    return {"bn": "http://192.168.1.20/", "bt": int(time.time()), "e": [{"n": "audio", "u": "/", "t": 0, "vd": vd}]}


def assert_error(r: requests.Response, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and isinstance(err["status"], str)
    assert words.lower() in err["message"].lower(), err["message"]


def test_reference_body_gives_labels(url: str, clip_wavs: dict[str, bytes], served_model_path: Path) -> None:
    labels = KwsModel(served_model_path).labels
    for i, (word, wav) in enumerate(clip_wavs.items()):
        body = senml(wav)
        send = requests.put if i % 2 == 0 else requests.post
        r = send(url + "/", data=json.dumps(body), timeout=10)  # exactly as the reference: no content type
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["label"] == word and set(out["probabilities"]) == set(labels)
        assert out["score"] == max(out["probabilities"].values()) and out["request_id"]
        assert (out["bn"], out["bt"]) == (body["bn"], body["bt"]) and out["model"] and out["model_version"]


def test_ima_adpcm_body_gives_the_pcm_label(url: str, clip_wavs: dict[str, bytes]) -> None:
    """The spec body with the clip as a 4-bit IMA ADPCM WAV (the edge's --wav ima-adpcm): a quarter of
    the bytes, the same answers."""
    for word, wav in clip_wavs.items():
        body = senml(encode_wav(*decode_wav(wav), "ima-adpcm"))
        assert len(json.dumps(body)) < len(json.dumps(senml(wav))) / 3.8
        r = requests.put(url + "/", data=json.dumps(body), timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["label"] == word


def test_senml_record_list_and_8k(url: str, clip_wavs: dict[str, bytes]) -> None:
    audio, rate = decode_wav(clip_wavs["stop"])
    records = [{"bn": "dev-7", "n": "audio", "vd": base64.b64encode(encode_wav(audio[::2], rate // 2)).decode()}]
    r = requests.put(url + "/", data=json.dumps(records), headers={"X-Request-Id": "abc"}, timeout=10)
    assert r.status_code == 200 and r.json()["request_id"] == "abc" and r.json()["bn"] == "dev-7"


def test_bad_spec_bodies(url: str, clip_wavs: dict[str, bytes]) -> None:
    audio, rate = decode_wav(clip_wavs["yes"])
    cases = [
        ("", 400, "empty body"),
        ("{not json", 400, "not JSON"),
        ("[1, 2]", 400, "no audio record"),
        ("123", 400, "record list"),
        (b"\xff\xfe{", 400, "not JSON"),
        (json.dumps({"bn": "x", "e": [{"n": "temperature", "v": 21}]}), 400, "no audio record"),
        (json.dumps({"bn": "x", "e": "audio"}), 400, "record list"),
        (json.dumps(senml("***not base64***")), 400, "base64"),
        (json.dumps(senml(b"")), 400, "empty audio"),
        (json.dumps(senml(b"this is not a wav file")), 400, "WAV"),
        (json.dumps(senml(encode_wav(audio[::4], rate // 4))), 400, "sample rate"),
        (json.dumps(senml(encode_wav(np.tile(audio, 3), rate))), 413, "at most 2"),
        (json.dumps(senml(b"\x00" * 900_000)), 413, "body exceeds"),
    ]
    for body, status, words in cases:
        assert_error(requests.put(url + "/", data=body, timeout=10), status, words)
    assert_error(requests.put(url + "/?model=nope", data=json.dumps(senml(clip_wavs["yes"])), timeout=10), 404, "unknown model")


def test_v1_predict_and_models(url: str, clip_wavs: dict[str, bytes], served_model_path: Path) -> None:
    model = KwsModel(served_model_path)
    req = {"requestId": "j1", "audio": {"wav": base64.b64encode(clip_wavs["down"]).decode()}}
    r = requests.post(url + "/v1/predict", data=json.dumps(req), timeout=10)
    assert r.status_code == 200 and r.json()["requestId"] == "j1" and r.json()["prediction"]["label"] == "down"
    feats = model.features(*decode_wav(clip_wavs["right"]))
    tensor = tensor_to_proto(feats)
    t = {"dtype": "FLOAT32", "shape": list(tensor.shape), "data": base64.b64encode(tensor.data).decode()}
    r = requests.post(url + "/v1/predict", json={"features": {"tensor": t}}, timeout=10)
    assert r.status_code == 200 and r.json()["prediction"]["label"] == "right"
    meta = requests.get(url + f"/v1/models/{model.name}", timeout=10).json()
    assert meta["labels"] == model.labels and meta["inputShape"] == list(model.feature_config.shape)
    assert_error(requests.get(url + "/v1/models/nope", timeout=10), 404, "unknown model")


def test_v1_bad_inputs(url: str, served_model_path: Path) -> None:
    model = KwsModel(served_model_path)
    nan = np.zeros(model.feature_config.shape, np.float32)
    nan[0, 0] = np.nan
    nan_t = {"dtype": "FLOAT32", "shape": list(nan.shape), "data": base64.b64encode(nan.tobytes()).decode()}
    cfg = config_to_proto(model.feature_config)
    cfg.num_mel_bins += 1
    bad_cfg = json_format.MessageToDict(cfg)
    ok_t = {**nan_t, "data": base64.b64encode(np.zeros_like(nan).tobytes()).decode()}
    cases = [
        ("nope", 400, "proto3 JSON"),
        (b"\xff\xfe{", 400, "proto3 JSON"),
        (json.dumps({"unknownField": 1}), 400, "proto3 JSON"),
        (json.dumps([1, 2]), 400, "JSON object"),
        (json.dumps({"audio": {"wav": "%%%"}}), 400, "audio.wav is not valid base64"),
        (json.dumps({"features": {"tensor": {**ok_t, "data": "ab$d"}}}), 400, "features.tensor.data is not valid base64"),
        (json.dumps({}), 400, "no input"),
        (json.dumps({"features": {"tensor": nan_t}}), 400, "NaN"),
        (json.dumps({"features": {"tensor": {**ok_t, "shape": [3, 3]}}}), 400, "bytes"),
        (json.dumps({"features": {"tensor": ok_t, "config": bad_cfg}}), 422, "model expects"),
    ]
    for body, status, words in cases:
        assert_error(requests.post(url + "/v1/predict", data=body, timeout=10), status, words)


def test_health_docs_and_unknown_routes(url: str) -> None:
    assert requests.get(url + "/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(url + "/readyz", timeout=5).json()["status"] == "SERVING"
    assert "/v1/predict" in requests.get(url + "/openapi.json", timeout=5).json()["paths"]
    assert_error(requests.get(url + "/nowhere", timeout=5), 404, "not found")
    assert_error(requests.get(url + "/", timeout=5), 405, "not allowed")


def test_grpc_down_is_503(clip_wavs: dict[str, bytes]) -> None:
    gateway = GatewayServer(GatewayConfig(f"127.0.0.1:{free_port()}", port=0, timeout_s=3))
    try:
        assert requests.get(gateway.url + "/healthz", timeout=5).status_code == 200
        assert_error(requests.get(gateway.url + "/readyz", timeout=10), 503, "not serving")
        r = requests.put(gateway.url + "/", data=json.dumps(senml(clip_wavs["yes"])), timeout=10)
        assert_error(r, 503, "unavailable")
    finally:
        gateway.stop()


def test_standalone_gateway(server: ServerHandle) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "kws_rpc.serving.gateway", "--grpc-target", server.target, "--port", "0"],
                            cwd=REPO, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if m := re.search(r"Uvicorn running on (http://[\d.]+:\d+)", line):
                break
        assert requests.get(m.group(1) + "/readyz", timeout=5).json()["status"] == "SERVING"
    finally:
        proc.terminate()
        assert proc.wait(15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean stop
