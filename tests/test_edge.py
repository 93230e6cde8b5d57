"""The edge: spec body and its byte rule, the margin rule, calibration on val only, fallback when the
server is down or slow, payload decoding, and (when the server exists) the cascade end to end."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from edge.cascade import load_threshold, should_ask
from edge.lab import calibrate
from edge.lab.cascade_report import headline, summarize
from edge.lab.evaluate import ClientConfig, config_from_args, parse_args, run
from edge.transports import OVER_BUDGET, GrpcTransport, RestSpecTransport, RetryPolicy
from kws_rpc.audio.wav import decode_wav, read_wav
from kws_rpc.model.kws_model import softmax_margin
from kws_rpc.wire.encodings import DCT_MAX_REQUEST_BYTES, ENCODINGS, REST_ROUTES, ROUTES, build_request, spec_body
from kws_rpc.wire.senml import spec_bytes

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "clips"
REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
FAST = RetryPolicy(timeout_s=0.3, retries=1, backoff_s=0.05, open_after=3, cooldown_s=30.0)


def fixture_clip(word: str = "yes") -> np.ndarray:
    audio, rate = read_wav(str(FIXTURES / f"{word}.wav"))
    assert rate == 16000
    return np.pad(audio, (0, 16000 - len(audio)))[:16000]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def little(little_path: Path) -> Path:
    if not little_path.is_file():
        pytest.skip(f"{little_path} not built yet (set KWS_TEST_LITTLE to a model)")
    return little_path


class _Handler(BaseHTTPRequestHandler):
    """Records the request; answers like the gateway, or with ``hold`` only once the test is over."""

    hold = False
    status = 200
    seen: list[tuple[str, dict[str, str], bytes]] = []
    released: threading.Event

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append((self.command, dict(self.headers), body))
        if self.hold:  # a server slower than any client timeout; a client without one gets an answer late
            self.released.wait(30)
        reply = json.dumps({"label": "yes"} if self.status == 200 else {"error": "bad"}).encode()
        try:
            self.send_response(self.status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
        except OSError:  # the client gave up first
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def http_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {**getattr(request, "param", {}), "seen": [], "released": threading.Event()})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/", handler
    finally:
        handler.released.set()
        srv.shutdown()
        srv.server_close()


def test_spec_body_shape_and_byte_rule() -> None:
    audio = fixture_clip()
    body = spec_body(audio, "0x1234", timestamp=1_700_000_000)
    assert set(body) == {"bn", "bt", "e"} and body["bn"] == "0x1234" and body["bt"] == 1_700_000_000
    (rec,) = body["e"]
    assert {k: rec[k] for k in ("n", "u", "t")} == {"n": "audio", "u": "/", "t": 0}
    wav = base64.b64decode(rec["vd"])
    decoded, rate = decode_wav(wav)
    assert rate == 16000 and len(wav) == 44 + 2 * 16000
    np.testing.assert_array_equal(decoded, audio)  # 16-bit clips survive the round trip exactly
    assert spec_bytes(body) == len(json.dumps(body))
    # 1 s clip: base64 of 32044 bytes is 42728 characters, plus the JSON around it.
    assert spec_bytes(body) == 42728 + len(json.dumps({**body, "e": [{**rec, "vd": ""}]}))


def test_rest_transport_sends_the_spec_body_and_counts_its_bytes(http_server) -> None:
    url, handler = http_server
    t = RestSpecTransport(url, "0xabc", FAST)
    answer = t.ask(fixture_clip(), "yes/x.wav")
    (method, headers, body), = handler.seen
    assert method == "PUT" and "Content-Type" not in headers
    assert answer.label == "yes" and answer.bytes_sent == len(body) == spec_bytes(json.loads(body))
    assert json.loads(body)["bn"] == "0xabc" and t.failures == 0


@pytest.mark.parametrize("http_server", [{"status": 400}], indirect=True)
def test_rest_transport_does_not_retry_a_rejected_request(http_server) -> None:
    url, handler = http_server
    t = RestSpecTransport(url, "0xabc", FAST)
    answer = t.ask(fixture_clip(), "yes/x.wav")
    assert answer.label is None and answer.attempts == 1 and len(handler.seen) == 1
    assert answer.bytes_sent == len(handler.seen[0][2]) and t.failures == 1 and "HTTP 400" in answer.error


def test_margin_rule() -> None:
    probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.5, 0.0]], np.float32)
    np.testing.assert_allclose(softmax_margin(probs), [0.3, 0.0], atol=1e-6)
    assert should_ask(0.2, 0.2) and should_ask(0.0, 0.2) and not should_ask(0.2001, 0.2)
    assert not should_ask(0.0, -1.0)  # a negative threshold never asks


def toy_predictions(split: str = "val") -> calibrate.SplitPredictions:
    # clips 0-3: little right and sure; 4-5: little wrong and unsure, big right; 6: both wrong.
    true = np.array([0, 1, 2, 3, 4, 5, 6])
    little = np.array([0, 1, 2, 3, 0, 0, 0])
    margin = np.array([0.9, 0.8, 0.7, 0.6, 0.05, 0.1, 0.3])
    big = np.array([0, 1, 2, 3, 4, 5, 7])
    return calibrate.SplitPredictions(split, [f"w/{i}.wav" for i in range(7)], true, little, margin, big,
                                      np.full(7, 1 << 20))


def test_cascade_replay_and_threshold_choice() -> None:
    p = toy_predictions()
    assert p.at(-1.0) == {"threshold": -1.0, "accuracy": 4 / 7, "cost_mb": 0.0, "calls": 0}
    assert p.at(0.1)["accuracy"] == 6 / 7 and p.at(0.1)["cost_mb"] == 2.0
    best = calibrate.pick_threshold(p, target_accuracy=6 / 7)
    assert best["calls"] == 2 and 0.1 <= best["threshold"] < 0.3  # midway, robust to small shifts
    with pytest.raises(ValueError):
        calibrate.pick_threshold(p, target_accuracy=1.0)


def test_budget_calibration_spends_the_budget_with_headroom() -> None:
    p = toy_predictions()  # every request costs 1 MB
    # At 50 % confidence the bound is the val cost itself: 3 asks fit 3.5 MB. The third ask (clip 6) does
    # not help on val, but a budget is spent: unsure clips are where big beats little.
    assert calibrate.pick_threshold(p, budget_mb=1.5, confidence=0.5)["calls"] == 1
    widest = calibrate.pick_threshold(p, budget_mb=3.5, confidence=0.5)
    assert widest["calls"] == 3 and widest["accuracy"] == p.at(0.1)["accuracy"]
    # At 95 % the other split may ask more than val did: c + 1.645 sqrt(2c(1 - c/n)) clips.
    assert calibrate.pick_threshold(p, budget_mb=1.5)["calls"] == 0
    assert calibrate.pick_threshold(p, budget_mb=3.5)["calls"] == 1
    point = {"calls": 20, "cost_mb": 20 * 0.04}
    assert calibrate.cost_bound_mb(point, 800, 0.5) == pytest.approx(0.8)
    assert calibrate.cost_bound_mb(point, 800) == pytest.approx((20 + 1.6449 * (40 * 0.975) ** 0.5) * 0.04, rel=1e-4)
    assert calibrate.cost_bound_mb({"calls": 0, "cost_mb": 0.0}, 800) == 0.0
    with pytest.raises(SystemExit, match="strictly between 0 and 1"):
        calibrate.main(["--local-big", "--confidence", "1"])


def test_client_caps_at_the_calibrated_budget(tmp_path: Path) -> None:
    cascade = tmp_path / "cascade.json"
    cascade.write_text(json.dumps({"threshold": 0.03, "val_clips": 800, "little": "abc",
                                   "target": {"budget_mb": {"rest-spec": 0.95, "grpc-mfcc-q5z": 0.1}},
                                   "ways": {"rest-spec": {"threshold": 0.03}, "grpc-mfcc-q5z": {"threshold": 0.2}}}))
    base = ["--cascade", str(cascade)]
    assert config_from_args(parse_args(base)).max_cost_mb == pytest.approx(0.95)
    cfg = config_from_args(parse_args([*base, "--transport", "grpc", "--payload", "mfcc-q5z", "--limit", "200"]))
    assert cfg.encoding == "logmel-q5z"  # --payload and mfcc-q5z: the first names, read from a file written with them
    assert config_from_args(parse_args([*base, "--transport", "grpc", "--encoding", "logmel-q5z", "--limit", "200"])) == cfg
    assert cfg.threshold == 0.2 and cfg.max_cost_mb == pytest.approx(0.1 * 200 / 800)  # scaled to the run
    assert config_from_args(parse_args([*base, "--max-cost-mb", "0"])).max_cost_mb is None
    assert config_from_args(parse_args([*base, "--max-cost-mb", "2"])).max_cost_mb == 2
    assert config_from_args(parse_args([*base, "--threshold", "0.1"])).max_cost_mb is None  # not calibrated
    with pytest.raises(SystemExit, match="budget in MB"):
        config_from_args(parse_args([*base, "--max-cost-mb", "-1"]))


def test_calibration_uses_val_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    splits: list[str] = []

    def fake_predict_split(split: str, *args: object, routes: list[str], **kw: object) -> dict[str, object]:
        splits.append(split)
        return {w: toy_predictions(split) for w in routes}

    class FakeModel:
        card = type("Card", (), {"sha256": "abc"})()

    monkeypatch.setattr(calibrate, "predict_split", fake_predict_split)
    monkeypatch.setattr(calibrate, "KwsModel", lambda path: FakeModel())
    out = tmp_path / "cascade.json"
    assert calibrate.main(["--local-big", "--target-accuracy", "0.8", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert splits == ["val"] and doc["split"] == "val" and doc["val_accuracy"] == 6 / 7
    assert doc["target"] == {"target_accuracy": 0.8} and 0.1 <= doc["threshold"] < 0.3
    assert set(doc["ways"]) == set(ROUTES) and doc["ways"]["rest-spec"]["threshold"] == doc["threshold"]
    assert load_threshold(out, "grpc-logmel-i8")[0] == doc["ways"]["grpc-logmel-i8"]["threshold"]
    assert load_threshold(out, "grpc-mfcc-i8") == load_threshold(out, "grpc-logmel-i8")  # the first name, an alias
    with pytest.raises(SystemExit):
        calibrate.main(["--local-big", "--split", "test", "--out", str(out)])
    assert splits == ["val"]
    out.unlink()
    from edge.lab import evaluate as client

    assert client.main(["--calibrate", "--local-big", "--budget-mb", "5", "--out", str(out)]) == 0  # the client's mode
    assert splits == ["val", "val"] and json.loads(out.read_text())["target"] == {"budget_mb": 5.0, "confidence": 0.95}


def client_config(little: Path, tmp_path: Path, transport: str, url: str, limit: int) -> ClientConfig:
    return ClientConfig(little=little, transport=transport, url=url, grpc_target=url,
                        encoding="logmel-f32" if transport == "grpc" else "spec", threshold=1.0, threshold_source="test", split="test", limit=limit, data_dir=None,
                        report=tmp_path / "r.json", device="0x1", policy=FAST, progress=False)


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_client_keeps_little_answers_when_server_is_down(transport: str, little: Path, tmp_path: Path,
                                                         dataset_root: Path) -> None:
    port = closed_port()
    target = f"http://127.0.0.1:{port}/" if transport == "rest" else f"127.0.0.1:{port}"
    records, summary = run(client_config(little, tmp_path, transport, target, limit=12))
    assert summary["calls"] == 12 and summary["failures"] == 12 and summary["cost_mb"] == 0.0
    assert all(r.big_label is None and r.final_label == r.little_label for r in records)
    assert summary["accuracy"] == summary["little_accuracy"]
    assert headline(summary).splitlines()[1] == "Communication Cost: 0.000 MB"


def test_client_exits_1_when_asks_failed(little: Path, tmp_path: Path, dataset_root: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """The run goes to the end on little's answers, and its exit code says that asks were lost."""
    from edge.lab import evaluate as client

    url = f"http://127.0.0.1:{closed_port()}/"
    report = tmp_path / "r.json"

    def argv(threshold: str) -> list[str]:
        return ["--url", url, "--little", str(little), "--threshold", threshold, "--limit", "3", "--no-progress",
                "--report", str(report)]

    with caplog.at_level(logging.ERROR, logger="edge.lab.evaluate"):
        assert client.main(argv("1.0")) == 1
    assert "3 of 3 asks to " + url + " failed" in caplog.text and report.exists()
    assert client.main(argv("0.0")) == 0  # threshold 0: nothing asked, nothing lost


def test_client_as_users_run_it_logs_under_its_module_name(little: Path, tmp_path: Path, dataset_root: Path) -> None:
    """`kws-edge eval` with no server: exit 1, and the log line names edge.lab.evaluate (under -m the
    module is __main__, and a logger named after __name__ printed that instead)."""
    url = f"http://127.0.0.1:{closed_port()}/"
    run_ = subprocess.run([sys.executable, "-m", "edge.cli", "eval", "--url", url, "--little", str(little), "--threshold",
                           "1.0", "--limit", "1", "--no-progress", "--report", str(tmp_path / "r.json"),
                           "--data-dir", str(dataset_root)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run_.returncode == 1, run_.stderr
    assert "ERROR edge.lab.evaluate: 1 of 1 asks to " + url + " failed" in run_.stderr


@pytest.mark.parametrize("http_server", [{"hold": True}], indirect=True)
def test_client_survives_a_slow_server(http_server, little: Path, tmp_path: Path, dataset_root: Path) -> None:
    url, handler = http_server
    records, summary = run(client_config(little, tmp_path, "rest", url, limit=10))
    # 3 asks time out (2 attempts of 0.3 s each), then the breaker answers locally for the rest: the
    # slow server sees a bounded number of requests however many clips follow.
    assert len(handler.seen) <= 6
    assert summary["failures"] == 10 and all(r.final_label == r.little_label for r in records)
    assert sum(r.bytes_sent > 0 for r in records) == 3  # timed-out bodies did leave the edge


def test_headline_format() -> None:
    from edge.lab.cascade_report import ClipRecord

    recs = [ClipRecord("yes/a.wav", "yes", "no", 0.1, True, "yes", "yes", 2_972_712, 1.0, 2.0)] + \
        [ClipRecord("yes/b.wav", "yes", "yes", 0.9, False, None, "yes", 0, 1.0, 0.0)] * 7
    s = summarize(recs)
    assert headline(s) == "Accuracy: 100.000%\nCommunication Cost: 2.835 MB"


def test_payloads_decode_to_the_same_answer(served_model_path: Path) -> None:
    """What payload.py feeds big locally: lossless payloads give big's own answer exactly, and each
    payload's size on the served model's features (49x40) keeps its place."""
    from edge.cascade import local_answer
    from kws_rpc.model.kws_model import KwsModel

    big = KwsModel(served_model_path)
    for word in ("yes", "no", "go"):
        audio = fixture_clip(word)
        direct = big.labels[int(np.argmax(big.predict_audio(audio, 16000)[0]))]
        assert local_answer(big, spec_body(audio, "0x1")) == direct
        for payload in ENCODINGS:
            req = build_request(audio, payload, word, big.feature_config)
            label = local_answer(big, req)
            if payload in ("wav", "pcm", "logmel-f32"):
                assert label == direct, payload
        sizes = {p: build_request(audio, p, word, big.feature_config).ByteSize() for p in ENCODINGS}
        assert (sizes["logmel-q4z"] < sizes["logmel-q5z"] < sizes["logmel-i8z"] < sizes["logmel-i8"] < sizes["logmel-f16"] < sizes["logmel-f32"]
                < sizes["pcm"] < sizes["wav"]), sizes
        assert sizes["logmel-q5z"] * 40 < spec_bytes(spec_body(audio, "0x1")), sizes
        assert sizes["logmel-dct"] < min(sizes["logmel-q4z"], DCT_MAX_REQUEST_BYTES + 1), sizes


def test_grpc_mfcc_needs_metadata_and_fails_softly() -> None:
    t = GrpcTransport(f"127.0.0.1:{closed_port()}", "mfcc-i8", FAST)
    try:
        answer = t.ask(fixture_clip(), "yes/x.wav")
    finally:
        t.close()
    assert answer.label is None and t.failures == 1 and t.config is None


def served_model(little_path: Path) -> Path:
    """What the end-to-end server serves as big: $KWS_TEST_MODEL or models/big_int8.tflite (what `make
    server` serves), else the little model (the protocol is still fully exercised)."""
    for path in (os.environ.get("KWS_TEST_MODEL"), MODELS / "big_int8.tflite", little_path):
        if path and Path(path).is_file():
            return Path(path)
    pytest.skip("no model built yet")


@pytest.fixture(scope="module")
def real_server(little_path: Path) -> Iterator[tuple[object, Path]]:
    """The real gRPC server + REST gateway on loopback."""
    server = pytest.importorskip("kws_rpc.serving.server")
    model = served_model(little_path)
    handle = server.serve(server.ServerConfig(models=(model,), port=0, gateway_port=0, log_level="WARNING"))
    try:
        yield handle, model
    finally:
        handle.stop(0.5)


@pytest.mark.parametrize("transport,payload", [("rest", "spec"), ("rest", "adpcm"), ("grpc", "wav"), ("grpc", "pcm"),
                                               ("grpc", "logmel-f32"), ("grpc", "logmel-f16"), ("grpc", "logmel-i8"),
                                               ("grpc", "mfcc-q5z")])  # mfcc-q5z: the first name of logmel-q5z
def test_cascade_end_to_end(real_server, transport: str, payload: str, little: Path, tmp_path: Path,
                            dataset_root: Path) -> None:
    from kws_rpc.model.kws_model import KwsModel

    handle, model = real_server
    policy = RetryPolicy(timeout_s=10.0, retries=1, backoff_s=0.05)
    url = handle.gateway.url + "/" if transport == "rest" else handle.target
    cfg = dataclasses.replace(client_config(little, tmp_path, transport, url, limit=6), encoding=payload,
                              policy=policy)
    codec = REST_ROUTES.get(f"rest-{payload}", "pcm16")
    remote = (RestSpecTransport(url, cfg.device, policy, wav_codec=codec) if transport == "rest"
              else GrpcTransport(url, payload, policy))
    try:
        records, summary = run(cfg, remote)
    finally:
        remote.close()
    assert summary["calls"] == 6 and summary["failures"] == 0
    big = KwsModel(model)  # the server's model, run here on the same clips
    if payload.startswith(("mfcc", "logmel")):
        assert remote.config == big.feature_config  # learnt from GetModelMetadata
    for r in records:
        audio, rate = read_wav(str(dataset_root / "mini_speech_commands" / r.name))
        probs = big.predict_audio(np.pad(audio, (0, 16000 - len(audio))), rate)[0]
        assert r.final_label == r.big_label
        top2 = np.sort(probs)[-2:]
        if payload in ("spec", "wav", "pcm", "logmel-f32") and top2[1] > top2[0]:  # lossless, no tie
            assert r.big_label == big.labels[int(np.argmax(probs))], r
    if transport == "rest":  # each clip is sent as recorded (some are shorter than 1 s), as the reference does
        for r in records:
            audio, _ = read_wav(str(dataset_root / "mini_speech_commands" / r.name))
            assert r.bytes_sent == spec_bytes(spec_body(audio, "0x1", wav_codec=codec)), r


def test_rest_transport_never_sends_past_max_bytes(http_server) -> None:
    url, handler = http_server
    t = RestSpecTransport(url, "0xabc", FAST)
    answer = t.ask(fixture_clip(), "yes/x.wav", max_bytes=40_000)  # one spec body is ~42.8 kB
    assert answer.label is None and answer.bytes_sent == 0 and answer.error == OVER_BUDGET
    assert handler.seen == [] and t.failures == 0  # not a remote failure: the breaker stays shut


def test_client_stops_asking_at_max_cost(real_server, little: Path, tmp_path: Path) -> None:
    handle, _ = real_server
    from kws_rpc.model.kws_model import KwsModel

    request = build_request(fixture_clip(), "mfcc-q5z", "x", KwsModel(real_server[1]).feature_config)
    cap_mb = 2.5 * request.ByteSize() / (1 << 20)  # room for about two of the asks, not six
    cfg = dataclasses.replace(client_config(little, tmp_path, "grpc", handle.target, limit=6),
                              encoding="mfcc-q5z", max_cost_mb=cap_mb,
                              policy=RetryPolicy(timeout_s=10.0, retries=1, backoff_s=0.05))
    records, summary = run(cfg)
    assert summary["cost_mb"] <= cap_mb
    assert summary["calls"] >= 1 and summary["over_budget"] >= 1 and summary["calls"] + summary["over_budget"] == 6
    assert summary["failures"] == 0
    assert all(r.final_label == r.little_label for r in records if r.error == OVER_BUDGET)
