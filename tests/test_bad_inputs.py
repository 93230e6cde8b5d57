"""The corpus of tests/bad_inputs.py against a real kws-server process (gRPC + gateway) and a real MQTT
worker: every input is a 4xx / INVALID_ARGUMENT / NOT_FOUND with a message (the few valid oddities in
ACCEPTED answer OK with finite probabilities); never a 5xx, INTERNAL or UNKNOWN. Afterwards the server
still answers, its RSS is within 50 MB of what it was once warmed up, and its log has no ERROR, no
traceback and no line longer than a few kB (user input is clipped). The tests run in file order; the last
one checks the server after all the others."""

from __future__ import annotations

import base64
import collections
import json
import logging
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import paho.mqtt.client as mqtt
import pytest
import requests
from google.protobuf import json_format

import bad_inputs
from kws_rpc.errors import InvalidInput
from kws_rpc.model.core import InferenceCore
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.mqtt.broker import EmbeddedBroker
from kws_rpc.mqtt.connection import BrokerSettings
from kws_rpc.mqtt.topics import Topics
from kws_rpc.mqtt.worker import Worker, WorkerConfig
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.proto.kws.v1 import kws_pb2_grpc as pb_grpc
from kws_rpc.wire.service import SERVICE
from tests.support.mosquitto import Mosquitto
from tests.support.server_process import ServerProcess

REPO = Path(__file__).resolve().parent.parent
REFUSED_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
REFUSED_HTTP = {400, 404, 413, 422}
MAX_MESSAGE = 1200  # errors.MAX_MESSAGE_CHARS plus what the transport adds
MAX_LOG_LINE = 4000
ERROR_LINE = re.compile(r"^(\d{4}-\d\d-\d\d [\d:,]+ (ERROR|CRITICAL) |Traceback)")
OUTCOMES: collections.Counter[tuple[str, str]] = collections.Counter()  # (transport, status) -> count


@pytest.fixture(scope="module")
def wav(clip_wavs: dict[str, bytes]) -> bytes:
    return clip_wavs["yes"]


@pytest.fixture(scope="module")
def model(served_model_path: Path) -> KwsModel:
    return KwsModel(served_model_path)


@pytest.fixture(scope="module")
def corpus(wav: bytes, model: KwsModel) -> dict[str, pb.PredictRequest]:
    return bad_inputs.requests(wav, model.feature_config)


@pytest.fixture(scope="module")
def server(served_model_path: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(served_model_path, "--max-message-bytes", str(8 << 20))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    opts = [("grpc.max_send_message_length", 8 << 20), ("grpc.max_receive_message_length", 8 << 20)]
    with grpc.insecure_channel(server.target, options=opts) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.KeywordSpottingStub:
    return pb_grpc.KeywordSpottingStub(channel)


@pytest.fixture(scope="module")
def baseline_rss(server: ServerProcess, stub: pb_grpc.KeywordSpottingStub, wav: bytes) -> float:
    """RSS once the server has answered good requests on every path (interpreters made, caches filled)."""
    for i in range(20):
        good_reply(stub, wav, f"warm-{i}")
        assert requests.put(server.url + "/", data=senml(wav), timeout=10).status_code == 200
    return server.rss_mb()


def senml(wav: bytes) -> bytes:
    return json.dumps({"bn": "dev", "bt": 1, "e": [{"n": "audio", "vd": base64.b64encode(wav).decode()}]}).encode()


def good_reply(stub: pb_grpc.KeywordSpottingStub, wav: bytes, rid: str) -> pb.PredictResponse:
    reply = stub.Predict(pb.PredictRequest(request_id=rid, audio=pb.Audio(wav=wav)), timeout=10)
    assert reply.request_id == rid and reply.prediction.label == "yes"
    return reply


def check_grpc(name: str, transport: str, call: object) -> None:
    """``call`` is a reply or the RpcError it raised."""
    if isinstance(call, grpc.RpcError):
        code, details = call.code(), call.details() or ""
        OUTCOMES[(transport, code.name)] += 1
        assert code in REFUSED_CODES, f"{name}: {code.name} {details[:300]}"
        assert name not in bad_inputs.ACCEPTED, f"{name} was refused: {details[:300]}"
        assert 10 < len(details) <= MAX_MESSAGE, f"{name}: message of {len(details)} chars"
    else:
        OUTCOMES[(transport, "OK")] += 1
        assert name in bad_inputs.ACCEPTED, f"{name} was accepted"
        assert np.all(np.isfinite(call.prediction.probabilities)), name  # type: ignore[attr-defined]


def check_http(name: str, transport: str, r: requests.Response) -> None:
    OUTCOMES[(transport, str(r.status_code))] += 1
    if r.status_code == 200:
        assert name.removeprefix("senml ") in bad_inputs.ACCEPTED, f"{name} was accepted"
        doc = r.json()
        probs = list(doc["probabilities"].values()) if "probabilities" in doc else doc["prediction"]["probabilities"]
        assert len(probs) > 1 and np.all(np.isfinite(probs)), name
        return
    assert r.status_code in REFUSED_HTTP, f"{name}: {r.status_code} {r.text[:300]}"
    message = r.json()["error"]["message"]
    assert 10 < len(message) <= MAX_MESSAGE, f"{name}: message of {len(message)} chars"


def test_grpc_unary(stub: pb_grpc.KeywordSpottingStub, channel: grpc.Channel, corpus: dict[str, pb.PredictRequest],
                    baseline_rss: float) -> None:
    for name, req in corpus.items():
        try:
            reply: object = stub.Predict(req, timeout=20)
        except grpc.RpcError as e:
            reply = e
        check_grpc(name, "grpc unary", reply)
    raw = channel.unary_unary(f"/{SERVICE}/Predict")
    for name, data in bad_inputs.raw_messages().items():
        with pytest.raises(grpc.RpcError) as e:
            raw(data, timeout=20)
        check_grpc(name, "grpc unary", e.value)
    with pytest.raises(grpc.RpcError) as e:
        stub.GetModelMetadata(pb.ModelMetadataRequest(model=bad_inputs.HUGE_NAME), timeout=20)
    check_grpc("metadata of a 512 kB model name", "grpc unary", e.value)


def test_grpc_stream(stub: pb_grpc.KeywordSpottingStub, channel: grpc.Channel, wav: bytes,
                     corpus: dict[str, pb.PredictRequest]) -> None:
    """Each bad item between two good ones: the first is answered, the call ends naming item 1."""
    good = pb.PredictRequest(request_id="good", audio=pb.Audio(wav=wav))
    raw_stream = channel.stream_stream(f"/{SERVICE}/PredictStream")
    items = {**corpus, **bad_inputs.raw_messages()}
    for name, bad in items.items():
        call = stub.PredictStream if isinstance(bad, pb.PredictRequest) else raw_stream
        first = good if isinstance(bad, pb.PredictRequest) else good.SerializeToString()
        got: list[object] = []
        try:
            got.extend(call(iter([first, bad, first]), timeout=20))
            outcome: object = got[1] if len(got) == 3 else None
        except grpc.RpcError as e:
            outcome = e
            assert "stream item 1" in (e.details() or ""), f"{name}: {e.details()}"
        assert len(got) >= 1, name
        check_grpc(name, "grpc stream", outcome if outcome is not None else got[-1])


def test_rest_spec(server: ServerProcess, wav: bytes) -> None:
    with requests.Session() as http:
        for name, (body, headers, query) in bad_inputs.spec_bodies(wav).items():
            r = http.put(server.url + "/" + (f"?{query}" if query else ""), data=body, headers=headers, timeout=20)
            check_http(name, "REST /", r)


def test_rest_v1(server: ServerProcess, corpus: dict[str, pb.PredictRequest]) -> None:
    with requests.Session() as http:
        for name, req in corpus.items():
            check_http(name, "REST /v1/predict", http.post(server.url + "/v1/predict",
                                                          data=json_format.MessageToJson(req), timeout=20))
        for name, body in bad_inputs.v1_bodies().items():
            check_http(name, "REST /v1/predict", http.post(server.url + "/v1/predict", data=body, timeout=20))
        r = http.get(server.url + "/v1/models/" + "m" * 8000, timeout=20)
        check_http("metadata of an 8 kB model name", "REST /v1/models", r)


# A worker may ignore the model field (the clips topic is shared by workers with different models) and
# leave request ids to its client: these may be answered or refused, but never fail.
MQTT_EITHER = {"unknown model", "model name of 512 kB", "request id of 100 kB",
               "model name with a newline and a fake log line"}


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    broker = Mosquitto() if Mosquitto.available() else EmbeddedBroker()
    with broker as b:
        yield b.url


def test_mqtt_worker(broker_url: str, served_model_path: Path, wav: bytes, corpus: dict[str, pb.PredictRequest],
                     caplog: pytest.LogCaptureFixture) -> None:
    """The corpus on the clips topic of a real broker: every bad clip refused and counted, none logged as
    a failure, and the worker still answers a good clip published after them all."""
    topics = Topics(f"bad{uuid.uuid4().hex[:8]}")
    worker = Worker(WorkerConfig(str(served_model_path), BrokerSettings.from_url(broker_url), topics.deployment,
                                 "w-bad")).start()
    votes: dict[str, pb.PredictResponse] = {}
    good_vote = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if topics.voter_of(msg.topic) is None:  # amqtt 0.12 also hands a new subscriber retained statuses
            return
        vote = pb.PredictResponse.FromString(msg.payload)
        votes[vote.request_id] = vote
        if vote.request_id == "good-after":
            good_vote.set()

    settings = BrokerSettings.from_url(broker_url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bad-inputs-{topics.deployment}")
    subscribed = threading.Event()
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect(settings.host, settings.port)
    client.loop_start()
    try:
        client.subscribe(topics.all_predictions, qos=1)
        assert subscribed.wait(10), "no SUBACK from the broker"
        payloads = {name: req.SerializeToString() for name, req in corpus.items()}
        payloads.update(bad_inputs.raw_messages())
        with caplog.at_level(logging.INFO, logger="kws_rpc.mqtt.worker"):
            for payload in payloads.values():
                client.publish(topics.clips, payload, qos=1).wait_for_publish(10)
            good = pb.PredictRequest(request_id="good-after", audio=pb.Audio(wav=wav)).SerializeToString()
            client.publish(topics.clips, good, qos=1).wait_for_publish(10)
            assert good_vote.wait(60), "the worker did not answer a good clip after the corpus"
        OUTCOMES[("MQTT", "refused")] += worker.rejected
        OUTCOMES[("MQTT", "answered")] += len(worker.answered) - 1
        ids = {corpus[n].request_id: n for n in corpus}
        answered = {ids[i] for i in worker.answered if i != "good-after"}
        assert bad_inputs.ACCEPTED <= answered <= bad_inputs.ACCEPTED | MQTT_EITHER, answered
        assert worker.rejected + len(answered) == len(payloads)  # every other clip refused and counted
        assert votes["good-after"].prediction.label == "yes"
        failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not failures, [r.getMessage()[:300] for r in failures]
        assert max(len(r.getMessage()) for r in caplog.records) <= MAX_LOG_LINE
    finally:
        client.loop_stop()
        client.disconnect()
        worker.stop()


def test_core_never_answers_nan(model: KwsModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Features within range can still drive a model to NaN: the answer is then an error, never OK."""
    feats = np.zeros(model.feature_config.shape, np.float32)
    monkeypatch.setattr(model, "predict", lambda x: np.full((1, len(model.labels)), np.nan, np.float32))
    with pytest.raises(InvalidInput, match="non-finite probabilities"):
        InferenceCore({model.name: model}, model.name).predict_features(feats)


def test_server_survives_the_corpus(server: ServerProcess, stub: pb_grpc.KeywordSpottingStub, wav: bytes,
                                    baseline_rss: float) -> None:
    assert server.proc.poll() is None, "the server died"
    good_reply(stub, wav, "after")
    r = requests.put(server.url + "/", data=senml(wav), timeout=10)
    assert r.status_code == 200 and r.json()["label"] == "yes"
    rss = server.rss_mb()
    print("\nbad inputs: outcomes by transport:", dict(sorted(OUTCOMES.items())),
          f"\nserver RSS {baseline_rss:.0f} MB warmed up -> {rss:.0f} MB after the corpus")
    assert not [k for k in OUTCOMES if k[1] in ("INTERNAL", "UNKNOWN") or k[1][:1] == "5"]
    assert rss - baseline_rss < 50, f"RSS grew from {baseline_rss:.0f} to {rss:.0f} MB"
    errors = [line for line in server.log if ERROR_LINE.match(line)]  # a quoted fake line stays inside its line
    assert not errors, errors[:5]
    assert max(len(line) for line in server.log) <= MAX_LOG_LINE
