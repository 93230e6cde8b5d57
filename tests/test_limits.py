"""Resource bounds on real servers on loopback: the cap on open streams, the stream idle timeout, the
server-side deadline of a prediction, the gateway's header and body read timeouts, and client disconnects
logged at INFO (no ERROR, no 500). Timeouts are set to about a second so the file runs in seconds."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.proto.kws.v1 import kws_pb2_grpc as pb_grpc
from kws_rpc.serving.gateway import GatewayConfig, GatewayServer
from kws_rpc.serving.limits import Limits
from kws_rpc.serving.server import ServerConfig, parse_args, serve

IDLE_S = 1.0


def wav_request(wav: bytes, rid: str = "r") -> pb.PredictRequest:
    return pb.PredictRequest(request_id=rid, audio=pb.Audio(wav=wav))


def wait_until(condition: object, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_streams_are_capped_and_idle_ones_ended(served_model_path: Path, clip_wavs: dict[str, bytes]) -> None:
    handle = serve(ServerConfig(models=(served_model_path,), limits=Limits(max_streams=2, stream_idle_s=IDLE_S)))
    release = threading.Event()
    try:
        with grpc.insecure_channel(handle.target) as ch:
            stub = pb_grpc.KeywordSpottingStub(ch)

            def one_then_idle(rid: str) -> Iterator[pb.PredictRequest]:
                yield wav_request(clip_wavs["up"], rid)
                release.wait(60)

            held = [stub.PredictStream(one_then_idle(f"s{i}"), timeout=60) for i in range(2)]
            assert [next(c).request_id for c in held] == ["s0", "s1"]  # both admitted, now idle
            with pytest.raises(grpc.RpcError) as e:
                next(stub.PredictStream(one_then_idle("s2"), timeout=60))
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-streams" in e.value.details()
            # unary calls are not starved by the idle streams
            assert stub.Predict(wav_request(clip_wavs["up"]), timeout=10).prediction.label == "up"
            for call in held:
                with pytest.raises(grpc.RpcError) as e:
                    next(call)
                assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.value.details()
                assert f"no request for {IDLE_S:g} s" in e.value.details()
            # their slots are free again
            reqs = [wav_request(clip_wavs["no"], f"n{i}") for i in range(3)]
            assert [r.request_id for r in stub.PredictStream(iter(reqs), timeout=10)] == ["n0", "n1", "n2"]
    finally:
        release.set()
        handle.stop(grace=1)


def test_a_cancelled_stream_frees_its_slot(served_model_path: Path, clip_wavs: dict[str, bytes]) -> None:
    handle = serve(ServerConfig(models=(served_model_path,), limits=Limits(max_streams=1, stream_idle_s=60)))
    release = threading.Event()
    try:
        with grpc.insecure_channel(handle.target) as ch:
            stub = pb_grpc.KeywordSpottingStub(ch)

            def one_then_idle() -> Iterator[pb.PredictRequest]:
                yield wav_request(clip_wavs["go"], "first")
                release.wait(60)

            call = stub.PredictStream(one_then_idle(), timeout=60)
            assert next(call).request_id == "first"
            call.cancel()

            def admitted() -> bool:
                try:
                    return next(stub.PredictStream(iter([wav_request(clip_wavs["go"], "2nd")]), timeout=10)) is not None
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
                    return False

            # the server learns of the cancel asynchronously: the slot frees within a moment, not in 60 s
            assert wait_until(admitted, 10)
    finally:
        release.set()
        handle.stop(grace=1)


def test_prediction_deadline(served_model_path: Path, clip_wavs: dict[str, bytes],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With batching on, a call whose batch does not come back within --call-timeout-s is DEADLINE_EXCEEDED,
    not a thread held for as long as the queue and the model take."""
    handle = serve(ServerConfig(models=(served_model_path,), max_batch_size=8, limits=Limits(call_timeout_s=0.5)))
    model, release = handle.core.model(), threading.Event()
    predict = model.predict

    def stuck(feats: np.ndarray) -> np.ndarray:
        release.wait(60)
        return predict(feats)

    monkeypatch.setattr(model, "predict", stuck)
    try:
        with grpc.insecure_channel(handle.target) as ch:
            with pytest.raises(grpc.RpcError) as e:
                pb_grpc.KeywordSpottingStub(ch).Predict(wav_request(clip_wavs["left"]), timeout=30)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "0.5 s deadline" in e.value.details()
    finally:
        release.set()
        handle.stop(grace=1)


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayServer]:
    """The gateway alone (no backend: every case here is decided before a call would be forwarded)."""
    limits = Limits(http_header_timeout_s=IDLE_S, http_body_timeout_s=IDLE_S, http_keep_alive_s=1)
    g = GatewayServer(GatewayConfig("127.0.0.1:1", port=0, limits=limits))
    yield g
    g.stop()


def exchange(port: int, data: bytes, timeout_s: float = 20.0) -> tuple[bytes, float]:
    """Sends ``data``, then reads until the server closes the connection: (all it sent, seconds taken)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        start = time.monotonic()
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        return got, time.monotonic() - start


HEAD = b"PUT / HTTP/1.1\r\nHost: kws\r\nContent-Length: 1000\r\n\r\n"


def test_half_sent_body_is_408_and_closed(gateway: GatewayServer) -> None:
    got, took = exchange(gateway.port, HEAD + b"{" * 500)
    assert got.startswith(b"HTTP/1.1 408 ") and b"connection: close" in got.lower(), got[:300]
    assert b'"status":"DEADLINE_EXCEEDED"' in got and b"did not arrive within 1 s" in got
    assert IDLE_S - 0.2 <= took < IDLE_S + 5, took  # the server's clock starts near our connect


def test_half_sent_head_and_silent_connections_are_closed(gateway: GatewayServer) -> None:
    for data in (b"", b"PUT / HTTP/1.1\r\nHost: kws\r\nContent-Le"):
        got, took = exchange(gateway.port, data)
        assert got == b"" and IDLE_S - 0.2 <= took < IDLE_S + 5, (data, got[:200], took)


def test_unread_body_is_closed_after_the_answer(gateway: GatewayServer) -> None:
    """A route that never reads its body answers, then the connection is closed once the body is late."""
    got, took = exchange(gateway.port, HEAD.replace(b"PUT / ", b"GET /healthz ") + b"{")
    assert got.startswith(b"HTTP/1.1 200 ") and took < IDLE_S + 5, got[:200]


def test_keep_alive_still_works(gateway: GatewayServer) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: kws\r\n\r\n"
    got, _ = exchange(gateway.port, request * 3)
    assert got.count(b"HTTP/1.1 200 ") == 3


def test_client_disconnect_is_not_a_server_error(gateway: GatewayServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        with socket.create_connection(("127.0.0.1", gateway.port)) as s:
            s.sendall(HEAD + b"{" * 10)
            assert wait_until(lambda: gateway._server.server_state.tasks), "the request never reached the app"
        assert wait_until(lambda: any("the client disconnected" in r.getMessage() for r in caplog.records))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]


def test_limits_config_and_flags(served_model_path: Path) -> None:
    with pytest.raises(ValueError, match="--stream-idle-s must be positive"):
        Limits(stream_idle_s=0)
    config = parse_args(["--model", str(served_model_path), "--max-streams", "4", "--max-inflight", "100",
                         "--stream-idle-s", "5", "--call-timeout-s", "2", "--http-body-timeout-s", "3"])
    assert config.limits == Limits(max_streams=4, max_inflight=100, stream_idle_s=5, call_timeout_s=2,
                                   http_body_timeout_s=3)
    with pytest.raises(SystemExit):
        parse_args(["--model", str(served_model_path), "--max-streams", "0"])
