"""Cooperative inference against real brokers on loopback: the embedded amqtt broker and mosquitto
(skipped only if the binary is absent). Members: $KWS_TEST_MEMBERS (comma-separated .tflite paths) or
the three shipped members. Each test uses a few dozen test clips so the file runs in about a minute."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edge.coop import PREPROCESS_CHUNK, CoopClient, CoopConfig, default_members, report
from kws.v1 import kws_pb2 as pb
from kws_rpc import ensemble
from kws_rpc.codec import metadata_to_proto
from kws_rpc.features import mfcc
from kws_rpc.model import KwsModel
from kws_rpc.mqtt.ballot import Ballot
from kws_rpc.mqtt.broker import EmbeddedBroker, Mosquitto
from kws_rpc.mqtt.connection import BrokerSettings
from kws_rpc.mqtt.topics import Topics
from kws_rpc.mqtt.worker import Worker, WorkerConfig

REPO = Path(__file__).resolve().parent.parent
CLIPS = 48


def member_paths() -> list[str]:
    env = os.environ.get("KWS_TEST_MEMBERS")
    paths = env.split(",") if env else default_members()
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        pytest.skip(f"ensemble members not found: {missing} (set KWS_TEST_MEMBERS)")
    return paths


@pytest.fixture(scope="module")
def members() -> list[str]:
    return member_paths()


@pytest.fixture(scope="module")
def clips(test_audio: tuple[np.ndarray, np.ndarray, list[str]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """CLIPS test clips spread over the split (every label)."""
    audio, labels, names = test_audio
    idx = np.linspace(0, len(audio) - 1, CLIPS).astype(int)
    return audio[idx], labels[idx], [names[i] for i in idx]


@pytest.fixture(params=["amqtt", "mosquitto"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _broker(request.param)


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    if not Mosquitto.available():
        pytest.skip("mosquitto is not installed")
    with Mosquitto() as m:
        yield m


@pytest.fixture
def any_broker() -> Iterator[str]:
    """mosquitto when installed (faster), else the embedded broker."""
    yield from _broker("mosquitto" if Mosquitto.available() else "amqtt")


def _broker(kind: str) -> Iterator[str]:
    if kind == "mosquitto":
        if not Mosquitto.available():
            pytest.skip("mosquitto is not installed")
        with Mosquitto() as m:
            yield m.url
    else:
        with EmbeddedBroker() as b:
            yield b.url


def deployment() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def start_workers(paths: list[str], url: str, dep: str, first: int = 0) -> list[Worker]:
    settings = BrokerSettings.from_url(url)
    return [Worker(WorkerConfig(p, settings, dep, f"w{first + i}")).start() for i, p in enumerate(paths)]


def coop(url: str, dep: str, workers: int, **kw: object) -> CoopClient:
    cfg = CoopConfig(BrokerSettings.from_url(url), dep, client_id="test", min_workers=workers,
                     discover_s=0.2, discover_timeout_s=20, progress=False, **kw)  # type: ignore[arg-type]
    return CoopClient(cfg).start()


def offline_votes(paths: list[str], audio: np.ndarray) -> list[np.ndarray]:
    """The same models on the same clips, without MQTT, fed what the wire carries: features computed in
    the client's chunks and rounded to float16 when the members share a feature config, else 16-bit PCM
    from which each model computes its own features."""
    from kws_rpc.audio import float_to_pcm16, pcm16_to_float

    models = [KwsModel(p) for p in paths]
    if len({m.feature_config for m in models}) == 1:
        cfg = models[0].feature_config
        feats = np.concatenate([mfcc(audio[i : i + PREPROCESS_CHUNK], cfg)
                                for i in range(0, len(audio), PREPROCESS_CHUNK)])
        feats = feats.astype(np.float16).astype(np.float32)
        return ensemble.stack_models([m.predict(feats) for m in models])
    pcm = [pcm16_to_float(float_to_pcm16(clip)) for clip in audio]
    return ensemble.stack_models([np.concatenate([m.predict(m.features(c)) for c in pcm]) for m in models])


def shared(paths: list[str]) -> bool:
    return len({KwsModel(p).feature_config for p in paths}) == 1


def stop_all(workers: list[Worker], client: CoopClient | None = None) -> None:
    if client is not None:
        client.stop()
    for w in workers:
        w.stop()


# --- the ballot alone ---------------------------------------------------------------------------------

def test_ballot_decides_on_votes_offline_and_timeout() -> None:
    now = [0.0]
    b = Ballot(timeout_s=5.0, offline_grace_s=1.0, clock=lambda: now[0])
    for w in ("a", "b", "c"):
        b.worker_online(w)
    for i in range(3):
        b.open(f"r{i}", i)
    p = np.array([0.2, 0.8], np.float32)
    for w in ("a", "b", "c"):
        assert b.vote("r0", w, "m", p)
    assert not b.vote("r0", "a", "m", p) and b.late_votes == 1  # decided already
    assert b.clips["r0"].reason == "all voted" and b.decided == 1
    assert b.vote("r1", "a", "m", p) and not b.vote("r1", "a", "m", p) and b.duplicate_votes == 1
    b.vote("r1", "b", "m", p)
    b.worker_offline("c")
    assert b.clips["r1"].decided_s is None  # within the grace: c may be back (broker restart)
    b.worker_online("c")
    b.worker_offline("c")
    now[0] = 1.5
    assert not b.wait(3, timeout_s=0.0)
    assert b.clips["r1"].reason == "worker offline" and b.clips["r1"].missing == ["c"]
    assert not b.vote("zz", "a", "m", p) and b.foreign_votes == 1
    b.vote("r2", "a", "m", p)
    assert not b.wait(3, timeout_s=0.0)  # r2 still waits for b
    now[0] = 6.0
    assert b.wait(3, timeout_s=0.0)
    assert "c" not in b.open("r3", 3).expected
    assert b.clips["r2"].reason == "timeout" and b.clips["r2"].missing == ["b", "c"]


# --- end to end -----------------------------------------------------------------------------------------

def test_end_to_end_matches_offline_ensemble(broker_url: str, members: list[str], clips) -> None:
    audio, labels, names = clips
    dep = deployment()
    workers = start_workers(members, broker_url, dep)
    client = coop(broker_url, dep, len(workers))
    try:
        run = client.run(audio)
        y = client.label_indices(labels)
        rep = report(run, y, names, client.labels(), "mean")
    finally:
        stop_all(workers, client)
    assert rep["clips"] == CLIPS and rep["decided_by"] == {"all voted": CLIPS}
    assert rep["missing_predictions"] == 0 and rep["votes_received"] == CLIPS * len(members)
    if shared(members):  # the shipped members: one 49x40 log-mel tensor, float16
        assert rep["payload"] == "features-f16" and rep["bytes_per_clip_message"] < 4200
    else:
        assert rep["payload"] == "audio-pcm16"
    offline = offline_votes(members, audio)
    for policy in ensemble.POLICIES:
        assert rep["per_policy_accuracy"][policy] == ensemble.accuracy(policy, offline, y), policy
    decided = [c["decided"] for c in rep["per_clip"]]
    assert decided == [client.labels()[d] for d in ensemble.decide_all("mean", offline)]


def test_worker_killed_mid_run(any_broker: str, members: list[str], clips) -> None:
    """A worker SIGKILLed mid-run: its last will says OFFLINE, the run finishes with the other votes
    and counts the gap, without waiting for clip timeouts."""
    audio, labels, names = clips
    dep = deployment()
    workers = start_workers(members[:2], any_broker, dep)
    proc = subprocess.Popen([sys.executable, "-m", "kws_rpc.mqtt.worker", "--model", members[2], "--broker",
                             any_broker, "--deployment", dep, "--worker-id", "victim", "--log-level", "WARNING"],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    client = coop(any_broker, dep, 3, timeout_s=30.0, interval_s=0.04)
    result: dict = {}

    def run() -> None:
        t0 = time.monotonic()
        result["run"] = client.run(audio)
        result["elapsed"] = time.monotonic() - t0

    runner = threading.Thread(target=run)
    try:
        runner.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(
                "victim" in c.votes for c in list(client.ballot.clips.values())) < 3:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        runner.join(60)
        rep = report(result["run"], client.label_indices(labels), names, client.labels(), "mean")
        elapsed = result["elapsed"]
    finally:
        proc.kill()
        proc.wait()
        runner.join(60)
        stop_all(workers, client)
    assert elapsed < 20, "the run waited for clip timeouts instead of the last will"
    assert "timeout" not in rep["decided_by"]
    victim_votes = sum(1 for c in rep["per_clip"] if "victim" in c["votes"])
    assert 0 < victim_votes < CLIPS
    assert rep["missing_predictions"] == sum(1 for c in rep["per_clip"] if "victim" in c["missing"]) > 0
    assert all({"w0", "w1"} <= set(c["votes"]) for c in rep["per_clip"])
    assert rep["accuracy"] > 0.5


def test_worker_joins_late(any_broker: str, members: list[str], clips) -> None:
    """A worker that comes online mid-run is awaited for the clips published after it appeared."""
    audio, labels, names = clips
    dep = deployment()
    workers = start_workers(members[:2], any_broker, dep)
    client = coop(any_broker, dep, 2, interval_s=0.03)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(run=client.run(audio)))
    late: list[Worker] = []
    try:
        runner.start()
        deadline = time.monotonic() + 30
        while len(client.ballot.clips) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        late = start_workers(members[2:3], any_broker, dep, first=2)
        runner.join(60)
        run = result["run"]
        rep = report(run, client.label_indices(labels), names, client.labels(), "mean")
    finally:
        runner.join(60)
        stop_all(workers + late, client)
    clips_ = [run.ballot.clips[r] for r in run.request_ids]
    invited = [c for c in clips_ if "w2" in c.invited]
    assert 0 < len(invited) < CLIPS - 10 and not any("w2" in c.invited for c in clips_[:10])
    assert all("w2" in c.votes for c in invited)
    assert rep["decided_by"] == {"all voted": CLIPS} and rep["missing_predictions"] == 0


def test_mosquitto_restart_mid_run(mosquitto: Mosquitto, members: list[str], clips) -> None:
    """The broker restarts mid-run: everybody reconnects; with persistent sessions each worker gets every
    QoS-2 clip exactly once and every clip is decided once."""
    audio, labels, names = clips
    dep = deployment()
    workers = start_workers(members, mosquitto.url, dep)
    client = coop(mosquitto.url, dep, len(workers), interval_s=0.03, timeout_s=4.0)
    restarter = threading.Timer(0.5, mosquitto.restart)
    try:
        restarter.start()
        run = client.run(audio)
        restarter.join()
        # votes of the last clips may still be in flight when the run ends by timeout; let workers finish
        deadline = time.monotonic() + 10
        while any(len(w.answered) < CLIPS for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        rep = report(run, client.label_indices(labels), names, client.labels(), "mean")
    finally:
        restarter.join()
        stop_all(workers, client)
    for w in workers:
        assert sorted(w.answered) == sorted(run.request_ids), f"{w.worker_id} lost or repeated clips"
    assert run.ballot.decided == CLIPS and len(run.ballot.clips) == CLIPS
    assert rep["duplicate_votes"] == 0
    # votes are QoS 0 (the contract): those in flight when the broker stops are lost, counted, and their
    # clips decided by timeout
    assert rep["missing_predictions"] <= 3 * len(members), rep["decided_by"]
    assert rep["clips_without_votes"] <= 3


def test_malformed_and_foreign_payloads_are_skipped(any_broker: str, members: list[str], clips) -> None:
    audio, labels, names = clips
    dep = deployment()
    topics = Topics(dep)
    workers = start_workers(members, any_broker, dep)
    client = coop(any_broker, dep, len(workers))
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"vandal-{dep}", protocol=mqtt.MQTTv311)
    settings = BrokerSettings.from_url(any_broker)
    pub.connect(settings.host, settings.port)
    pub.loop_start()
    shape = list(workers[0].card.feature.shape)
    wrong = pb.PredictRequest(request_id="x1", features=pb.Features(tensor=pb.Tensor(
        dtype=pb.FLOAT32, shape=[shape[0], shape[1] + 1], data=b"\0" * 4 * shape[0] * (shape[1] + 1))))
    nan = pb.PredictRequest(request_id="x2", features=pb.Features(tensor=pb.Tensor(
        dtype=pb.FLOAT32, shape=shape, data=np.full(shape, np.nan, np.float32).tobytes())))
    junk = [(topics.clips, b"\xff\x00garbage"), (topics.clips, b""), (topics.clips, wrong.SerializeToString()),
            (topics.clips, nan.SerializeToString()), (topics.clips, b'{"json": "not a proto"}'),
            (topics.predictions, b"\x0a\xff"), (topics.predictions, pb.PredictResponse(
                request_id="nobody", worker_id="w0").SerializeToString()),
            (topics.status("ghost"), b"\x12\x34garbage"),
            (topics.status("ghost"), pb.WorkerStatus(worker_id="w0", state=1).SerializeToString())]
    try:
        for topic, data in junk:
            pub.publish(topic, data, qos=1).wait_for_publish(5)
        run = client.run(audio[:16])
        rep = report(run, client.label_indices(labels[:16]), names[:16], client.labels(), "mean")
    finally:
        pub.loop_stop()
        pub.disconnect()
        stop_all(workers, client)
    assert rep["decided_by"] == {"all voted": 16} and rep["missing_predictions"] == 0
    assert all(w.rejected >= 4 for w in workers), [w.rejected for w in workers]
    assert "ghost" not in client.statuses and client.rejected >= 2


def test_shared_config_decides_the_payload(members: list[str]) -> None:
    from kws_rpc.codec import metadata_to_proto
    from kws_rpc.features import FeatureConfig
    from kws_rpc.mqtt.payloads import shared_config

    card = KwsModel(members[0]).card
    same = [pb.WorkerStatus(worker_id=f"w{i}", state=1, model=metadata_to_proto(card)) for i in range(2)]
    assert shared_config(same) == card.feature
    other = pb.WorkerStatus(worker_id="w9", state=1, model=metadata_to_proto(card))
    other.model.feature_config.num_mel_bins += 1
    assert shared_config([*same, other]) is None and shared_config([]) is None
    assert isinstance(card.feature, FeatureConfig)


def test_audio_payload_and_mixed_feature_configs(any_broker: str, members: list[str], little_path: Path,
                                                 clips) -> None:
    """Workers with different feature configs get audio (each computes its own features)."""
    audio, labels, names = clips
    paths = members[:2]
    if little_path.is_file() and KwsModel(little_path).feature_config != KwsModel(members[0]).feature_config:
        paths.append(str(little_path))
        payload = "auto"  # must fall back to audio by itself
    else:
        payload = "audio"
    dep = deployment()
    workers = start_workers(paths, any_broker, dep)
    client = coop(any_broker, dep, len(workers), payload=payload)
    try:
        run = client.run(audio[:12])
        rep = report(run, client.label_indices(labels[:12]), names[:12], client.labels(), "mean")
    finally:
        stop_all(workers, client)
    assert rep["payload"] == "audio-pcm16" and rep["bytes_per_clip_message"] > 32000
    assert rep["decided_by"] == {"all voted": 12} and rep["missing_predictions"] == 0
    assert rep["accuracy"] >= 0.5


def test_cli_one_command_demo(members: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m edge.coop` without --broker: embedded broker, in-process workers, exact output line."""
    import json
    import re

    from edge.coop import main

    out = tmp_path / "coop.json"
    main(["--models", *members, "--limit", "24", "--policy", "majority", "--report", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert re.search(r"^Accuracy: \d{1,3}\.\d{3}%$", text, re.M), text
    rep = json.loads(out.read_text())
    assert rep["clips"] == 24 and rep["embedded"] and len(rep["workers"]) == len(members)
    assert rep["bytes_per_clip_message"] < rep["senml_json_base64_f32_clip_bytes"]
    assert f"Accuracy: {100 * rep['accuracy']:.3f}%" in text


def test_worker_takes_clips_only_from_the_clips_topic(members: list[str]) -> None:
    """A broker that hands a subscriber another topic's retained message (amqtt 0.12 did, under load)
    must not make a worker vote on it: a WorkerStatus even parses as a PredictRequest (field 3 = audio)."""
    topics = Topics(deployment())
    worker = Worker(WorkerConfig(members[0], BrokerSettings.from_url("mqtt://127.0.0.1:1"), topics.deployment, "w0"))
    status = pb.WorkerStatus(worker_id="w3", state=1, model=metadata_to_proto(worker.card)).SerializeToString()
    for topic, queued in ((topics.status("w3"), 0), (topics.clips, 1)):
        msg = mqtt.MQTTMessage(topic=topic.encode())
        msg.payload = status
        worker._on_message(worker.client, None, msg)
        assert worker._inbox.qsize() == queued and worker.rejected == 0, topic
