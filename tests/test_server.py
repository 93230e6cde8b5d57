"""The gRPC server end to end on loopback: real clips, every bad input, health, reflection, metrics,
message limits and graceful shutdown (in-process and through SIGTERM)."""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import zlib

import numpy as np
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kws_rpc.audio.wav import decode_wav, encode_wav
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.proto.kws.v1 import kws_pb2_grpc as pb_grpc
from kws_rpc.serving.server import ServerConfig, ServerHandle, serve
from kws_rpc.wire.codec import config_to_proto, tensor_to_proto
from kws_rpc.wire.service import SERVICE

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(served_model_path: Path) -> Iterator[ServerHandle]:
    handle = serve(ServerConfig(models=(served_model_path,), max_batch_size=8, max_delay_ms=2,
                                max_message_bytes=256 * 1024, metrics_port=0))
    yield handle
    handle.stop(grace=1)


@pytest.fixture(scope="module")
def channel(server: ServerHandle) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.KeywordSpottingStub:
    return pb_grpc.KeywordSpottingStub(channel)


@pytest.fixture(scope="module")
def model(served_model_path: Path) -> KwsModel:
    return KwsModel(served_model_path)


def wav_request(wav: bytes, rid: str = "r") -> pb.PredictRequest:
    return pb.PredictRequest(request_id=rid, audio=pb.Audio(wav=wav))


def test_labels_real_clips(stub: pb_grpc.KeywordSpottingStub, clip_wavs: dict[str, bytes], model: KwsModel) -> None:
    for word, wav in clip_wavs.items():
        reply = stub.Predict(wav_request(wav, rid=f"id-{word}"), timeout=10)
        p = reply.prediction
        assert (reply.request_id, p.label, p.model) == (f"id-{word}", word, model.name)
        assert len(p.probabilities) == len(model.labels) and math.isclose(sum(p.probabilities), 1, abs_tol=0.02)
        assert p.margin >= 0 and model.labels[p.index] == word


def test_pcm16_and_features_inputs(stub: pb_grpc.KeywordSpottingStub, clip_wavs: dict[str, bytes],
                                   model: KwsModel) -> None:
    audio, rate = decode_wav(clip_wavs["yes"])
    pcm = pb.Audio(sample_rate=rate, pcm16=(np.round(audio * 32768).astype("<i2")).tobytes())
    assert stub.Predict(pb.PredictRequest(audio=pcm)).prediction.label == "yes"
    feats = model.features(audio, rate)
    for dtype in (pb.FLOAT32, pb.FLOAT16, pb.INT8):
        req = pb.PredictRequest(features=pb.Features(tensor=tensor_to_proto(feats, dtype),
                                                     config=config_to_proto(model.feature_config)))
        assert stub.Predict(req).prediction.label == "yes", pb.DType.Name(dtype)
    # an 8 kHz clip is resampled by the server
    slow = encode_wav(audio[::2], rate // 2)
    assert stub.Predict(wav_request(slow)).prediction.label in model.labels


def test_stream(stub: pb_grpc.KeywordSpottingStub, clip_wavs: dict[str, bytes]) -> None:
    replies = list(stub.PredictStream(iter([wav_request(w, rid=k) for k, w in clip_wavs.items()]), timeout=20))
    assert {r.request_id: r.prediction.label for r in replies} == {k: k for k in clip_wavs}


def test_stream_bad_item_aborts_with_its_id(stub: pb_grpc.KeywordSpottingStub, clip_wavs: dict[str, bytes]) -> None:
    reqs = [wav_request(clip_wavs["go"], "ok-1"), wav_request(b"RIFFnonsense", "broken"), wav_request(clip_wavs["no"])]
    got: list[str] = []
    with pytest.raises(grpc.RpcError) as e:
        for r in stub.PredictStream(iter(reqs), timeout=10):
            got.append(r.request_id)
    assert got == ["ok-1"]
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "stream item 1 (request_id 'broken')" in e.value.details()


def bad_requests(model: KwsModel, wav: bytes) -> dict[str, pb.PredictRequest]:
    feats = np.zeros(model.feature_config.shape, np.float32)
    nan = feats.copy()
    nan[3, 4] = np.nan
    other_cfg = config_to_proto(model.feature_config)
    other_cfg.num_mel_bins += 1
    audio, rate = decode_wav(wav)
    return {
        "no input": pb.PredictRequest(request_id="x"),
        "empty wav": wav_request(b""),
        "not a wav": wav_request(b"hello world, not a wav file"),
        "stereo": wav_request(b"RIFF" + wav[4:22] + b"\x02\x00" + wav[24:]),
        "rate 4 kHz": wav_request(encode_wav(audio[::4], rate // 4)),
        "too long": wav_request(encode_wav(np.tile(audio, 3), rate)),
        "pcm16 without rate": pb.PredictRequest(audio=pb.Audio(pcm16=b"\x00\x01" * 100)),
        "odd pcm16": pb.PredictRequest(audio=pb.Audio(sample_rate=16000, pcm16=b"\x00" * 101)),
        "NaN features": pb.PredictRequest(features=pb.Features(tensor=tensor_to_proto(nan))),
        "wrong shape": pb.PredictRequest(features=pb.Features(tensor=tensor_to_proto(feats[:, :5]))),
        "batch of 2": pb.PredictRequest(features=pb.Features(tensor=tensor_to_proto(np.stack([feats, feats])))),
        "wrong config": pb.PredictRequest(features=pb.Features(tensor=tensor_to_proto(feats), config=other_cfg)),
        "no dtype": pb.PredictRequest(features=pb.Features(tensor=pb.Tensor(shape=[49, 10], data=b"\x00" * 490))),
        "short data": pb.PredictRequest(features=pb.Features(tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[2], data=b"1"))),
        "no tensor": pb.PredictRequest(features=pb.Features(config=config_to_proto(model.feature_config))),
        **{f"DIFF2_ZLIB {k}": pb.PredictRequest(features=pb.Features(tensor=t)) for k, t in bad_zlib_tensors(feats).items()},
    }


def bad_zlib_tensors(feats: np.ndarray) -> dict[str, pb.Tensor]:
    """Compressed INT8 tensors that must be refused: garbage, truncated, too short, a zip bomb, float."""
    good = tensor_to_proto(feats + np.arange(feats.shape[1]), pb.INT8, 32, pb.TENSOR_ENCODING_DIFF2_ZLIB)

    def like(data: bytes, **kw: object) -> pb.Tensor:
        t = pb.Tensor()
        t.CopyFrom(good)
        t.data = data
        for k, v in kw.items():
            setattr(t, k, v)
        return t

    return {
        "garbage": like(b"not zlib at all"),
        "truncated": like(good.data[: len(good.data) // 2]),
        "too few values": like(zlib.compress(b"\x00" * 100)),
        "zip bomb": like(zlib.compress(b"\x00" * 50_000_000)),
        "on FLOAT32": like(good.data, dtype=pb.FLOAT32),
        "unknown encoding": like(good.data, encoding=7),
    }


def test_bad_inputs_are_invalid_argument(stub: pb_grpc.KeywordSpottingStub, channel: grpc.Channel,
                                         clip_wavs: dict[str, bytes], model: KwsModel) -> None:
    for name, req in bad_requests(model, clip_wavs["yes"]).items():
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(req, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert len(e.value.details()) > 10, name
    raw = channel.unary_unary(f"/{SERVICE}/Predict")
    with pytest.raises(grpc.RpcError) as e:
        raw(b"\x0a\xff\xff", timeout=10)  # truncated length-delimited field
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in e.value.details()


def test_unknown_model_and_metadata(stub: pb_grpc.KeywordSpottingStub, model: KwsModel) -> None:
    with pytest.raises(grpc.RpcError) as e:
        stub.GetModelMetadata(pb.ModelMetadataRequest(model="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and model.name in e.value.details()
    meta = stub.GetModelMetadata(pb.ModelMetadataRequest())
    assert (meta.name, list(meta.labels), meta.sha256) == (model.name, model.labels, model.card.sha256)
    assert list(meta.input_shape) == list(model.feature_config.shape)


def test_message_size_limit(stub: pb_grpc.KeywordSpottingStub) -> None:
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(wav_request(b"\x00" * 300_000), timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
            health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    reply = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert SERVICE in {s.name for s in reply.list_services_response.service}


def test_metrics_endpoint(server: ServerHandle, stub: pb_grpc.KeywordSpottingStub, clip_wavs: dict[str, bytes]) -> None:
    stub.Predict(wav_request(clip_wavs["up"]))
    text = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).text
    assert re.search(r'kws_requests_total\{code="OK",method="Predict"\} [1-9]', text)
    assert re.search(r'kws_requests_total\{code="INVALID_ARGUMENT",method="Predict"\} [1-9]', text)
    assert re.search(r'kws_errors_total\{error="\w+",method="Predict"\} [1-9]', text)
    assert re.search(r"kws_request_latency_seconds_count\{method=\"Predict\"\} [1-9]", text)
    assert re.search(r'kws_batch_size_count\{model="\w+"\} [1-9]', text)
    assert "kws_ready 1.0" in text


def test_graceful_shutdown_finishes_in_flight(served_model_path: Path, clip_wavs: dict[str, bytes],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    handle = serve(ServerConfig(models=(served_model_path,), max_batch_size=8, max_delay_ms=2))
    # The call is held inside the model until the gRPC server has begun stopping: in flight by construction.
    model, in_model, stopping = handle.core.model(), threading.Event(), threading.Event()
    predict, grpc_stop = model.predict, handle.server.stop

    def held_predict(feats: np.ndarray) -> np.ndarray:
        in_model.set()
        stopping.wait(60)
        return predict(feats)

    async def stop_and_tell(grace: float | None) -> None:
        stopped = asyncio.ensure_future(grpc_stop(grace))
        await asyncio.sleep(0.2)  # the server has begun stopping: new calls are refused from here on
        stopping.set()
        await stopped

    monkeypatch.setattr(model, "predict", held_predict)
    monkeypatch.setattr(handle.server, "stop", stop_and_tell)
    result: dict[str, object] = {}
    with grpc.insecure_channel(handle.target) as ch:
        stub = pb_grpc.KeywordSpottingStub(ch)
        t = threading.Thread(target=lambda: result.update(r=stub.Predict(wav_request(clip_wavs["left"]), timeout=60)))
        t.start()
        assert in_model.wait(60), "the call never reached the model"
        stopper = threading.Thread(target=handle.stop, kwargs={"grace": 600})
        stopper.start()
        t.join(60)
        stopper.join(60)  # a stop() that sat out the 10 min grace would still be running
        assert result["r"].prediction.label == "left"  # type: ignore[attr-defined]
        assert not stopper.is_alive(), "stop() waited past the last call in flight"
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(wav_request(clip_wavs["left"]), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_cli_stops_on_sigterm(served_model_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "kws_rpc.serving.server", "--model", str(served_model_path),
                             "--port", "0", "--max-batch-size", "1"], cwd=REPO, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if " serving " in line:
                break
        port = int(re.search(r"on grpc [\d.]+:(\d+) \(batching off\)", lines[-1]).group(1))  # type: ignore[union-attr]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(15) == 0
        assert "received SIGTERM" in rest and "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
