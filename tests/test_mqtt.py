"""Cooperative inference against real brokers on loopback: the embedded amqtt broker and mosquitto
(skipped only if the binary is absent). Members: $KWS_TEST_MEMBERS (comma-separated .tflite paths) or
the three shipped members. Each test uses a few dozen test clips so the file runs in about a minute."""

from __future__ import annotations

import dataclasses
import logging
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

from kws_rpc.audio.features import log_mel
from kws_rpc.lab import ensemble_fit
from kws_rpc.lab.coop import default_members
from kws_rpc.lab.coop_report import report
from kws_rpc.model import ensemble
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.mqtt.ballot import Ballot
from kws_rpc.mqtt.broker import EmbeddedBroker
from kws_rpc.mqtt.connection import BrokerSettings
from kws_rpc.mqtt.coop import PREPROCESS_CHUNK, CoopClient, CoopConfig
from kws_rpc.mqtt.topics import Topics
from kws_rpc.mqtt.worker import Worker, WorkerConfig
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.wire.codec import metadata_to_proto
from tests.support.mosquitto import Mosquitto

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


DEPLOY_CONF = REPO / "deploy" / "mosquitto.conf"


@pytest.fixture(params=["amqtt", "mosquitto", "mosquitto-deploy"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _broker(request.param)


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """mosquitto with the shipped configuration (persistent sessions)."""
    if not Mosquitto.available():
        pytest.skip("mosquitto is not installed")
    with Mosquitto(config=DEPLOY_CONF) as m:
        yield m


@pytest.fixture
def stock_mosquitto() -> Iterator[Mosquitto]:
    """`mosquitto -p PORT`, no configuration file: what users run first."""
    if not Mosquitto.available():
        pytest.skip("mosquitto is not installed")
    with Mosquitto() as m:
        yield m


@pytest.fixture
def any_broker() -> Iterator[str]:
    """mosquitto when installed (faster), else the embedded broker."""
    yield from _broker("mosquitto" if Mosquitto.available() else "amqtt")


def _broker(kind: str) -> Iterator[str]:
    if kind.startswith("mosquitto"):
        if not Mosquitto.available():
            pytest.skip("mosquitto is not installed")
        with Mosquitto(config=DEPLOY_CONF if kind == "mosquitto-deploy" else None) as m:
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
    from kws_rpc.audio.wav import float_to_pcm16, pcm16_to_float

    models = [KwsModel(p) for p in paths]
    if len({m.feature_config for m in models}) == 1:
        cfg = models[0].feature_config
        feats = np.concatenate([log_mel(audio[i : i + PREPROCESS_CHUNK], cfg)
                                for i in range(0, len(audio), PREPROCESS_CHUNK)])
        feats = feats.astype(np.float16).astype(np.float32)
        return ensemble_fit.stack_models([m.predict(feats) for m in models])
    pcm = [pcm16_to_float(float_to_pcm16(clip)) for clip in audio]
    return ensemble_fit.stack_models([np.concatenate([m.predict(m.features(c)) for c in pcm]) for m in models])


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
    assert not b.vote("r0", "a", "m", p) and b.refused["duplicate"] == 1  # a repeat of a decided clip
    assert b.clips["r0"].reason == "all voted" and b.decided == 1
    assert b.vote("r1", "a", "m", p) and not b.vote("r1", "a", "m", p) and b.refused["duplicate"] == 2
    b.vote("r1", "b", "m", p)
    b.worker_offline("c")
    assert b.clips["r1"].decided_s is None  # within the grace: c may be back (broker restart)
    b.worker_online("c")
    b.worker_offline("c")
    now[0] = 1.5
    assert not b.wait(3, timeout_s=0.0)
    assert b.clips["r1"].reason == "worker offline" and b.clips["r1"].missing == ["c"]
    assert not b.vote("zz", "a", "m", p) and b.refused["unknown request"] == 1
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
        assert rep["per_policy_accuracy"][policy] == ensemble_fit.accuracy(policy, offline, y), policy
    decided = [c["decided"] for c in rep["per_clip"]]
    assert decided == [client.labels()[d] for d in ensemble.decide_all("mean", offline)]


def _gate(client: CoopClient, at: int, action) -> None:
    """Runs action() in the run's own thread just before clip ``at`` is opened: mid-run events happen
    at a known clip, not after a guessed sleep."""
    opener = client.ballot.open

    def gated(request_id: str, index: int):
        if index == at:
            action()
        return opener(request_id, index)

    client.ballot.open = gated  # type: ignore[method-assign]


def test_worker_killed_mid_run(any_broker: str, members: list[str], clips) -> None:
    """A worker SIGKILLed mid-run: its last will says OFFLINE, the run finishes with the other votes,
    counts the gap as excused (the worker died), and never waits for clip timeouts."""
    audio, labels, names = clips
    dep = deployment()
    workers = start_workers(members[:2], any_broker, dep)
    proc = subprocess.Popen([sys.executable, "-m", "kws_rpc.mqtt.worker", "--model", members[2], "--broker",
                             any_broker, "--deployment", dep, "--worker-id", "victim", "--log-level", "WARNING"],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    client = coop(any_broker, dep, 3, timeout_s=60.0)

    def kill_after_a_vote() -> None:
        client.ballot.pump(lambda: any("victim" in c.votes for c in client.ballot.clips.values()), 30.0)
        proc.send_signal(signal.SIGKILL)

    _gate(client, 10, kill_after_a_vote)
    try:
        run = client.run(audio)
        rep = report(run, client.label_indices(labels), names, client.labels(), "mean")
    finally:
        proc.kill()
        proc.wait()
        stop_all(workers, client)
    assert "timeout" not in rep["decided_by"], "the run waited for clip timeouts instead of the last will"
    victim_votes = sum(1 for c in rep["per_clip"] if "victim" in c["votes"])
    assert 0 < victim_votes < CLIPS
    assert rep["excused_predictions"] == sum(1 for c in rep["per_clip"] if "victim" in c["missing"]) > 0
    assert rep["missing_predictions"] == 0 and rep["lost"] == 0
    assert all({"w0", "w1"} <= set(c["votes"]) for c in rep["per_clip"])
    assert rep["accuracy"] > 0.5


def test_worker_joins_late(any_broker: str, members: list[str], clips) -> None:
    """A worker that comes online mid-run is awaited for exactly the clips opened after it appeared."""
    audio, labels, names = clips
    dep = deployment()
    workers = start_workers(members[:2], any_broker, dep)
    client = coop(any_broker, dep, 2)
    late: list[Worker] = []

    def join() -> None:
        late.extend(start_workers(members[2:3], any_broker, dep, first=2))
        assert "w2" in client.ballot.wait_for_workers(3, 30.0)

    _gate(client, 10, join)
    try:
        run = client.run(audio)
        rep = report(run, client.label_indices(labels), names, client.labels(), "mean")
    finally:
        stop_all(workers + late, client)
    clips_ = [run.ballot.clips[r] for r in run.request_ids]
    assert [("w2" in c.invited) for c in clips_] == [False] * 10 + [True] * (CLIPS - 10)
    assert all("w2" in c.votes for c in clips_[10:])
    assert rep["decided_by"] == {"all voted": CLIPS} and rep["missing_predictions"] == 0


def test_mosquitto_restart_mid_run(mosquitto: Mosquitto, members: list[str], clips) -> None:
    """The shipped config (persistent sessions) restarts mid-run: everybody reconnects, each worker runs
    every clip exactly once, and every clip is decided once with every vote."""
    audio, labels, names = clips
    dep = deployment()
    workers = start_workers(members, mosquitto.url, dep)
    client = coop(mosquitto.url, dep, len(workers), timeout_s=30.0)
    _gate(client, CLIPS // 3, mosquitto.restart)
    try:
        run = client.run(audio)
        rep = report(run, client.label_indices(labels), names, client.labels(), "mean")
    finally:
        stop_all(workers, client)
    for w in workers:
        assert sorted(w.answered) == sorted(run.request_ids), f"{w.worker_id} lost or repeated clips"
    assert run.ballot.decided == CLIPS and len(run.ballot.clips) == CLIPS
    assert rep["lost"] == 0 and rep["missing_predictions"] == 0, rep["decided_by"]


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
            (topics.predictions("w0"), b"\x0a\xff"), (topics.predictions("w0"), pb.PredictResponse(
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
    from kws_rpc.audio.features import FeatureConfig
    from kws_rpc.mqtt.payloads import shared_config
    from kws_rpc.wire.codec import metadata_to_proto

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
    client = coop(any_broker, dep, len(workers), encoding=payload)
    try:
        run = client.run(audio[:12])
        rep = report(run, client.label_indices(labels[:12]), names[:12], client.labels(), "mean")
    finally:
        stop_all(workers, client)
    assert rep["payload"] == "audio-pcm16" and rep["bytes_per_clip_message"] > 32000
    assert rep["decided_by"] == {"all voted": 12} and rep["missing_predictions"] == 0
    assert rep["accuracy"] >= 0.5


def test_cli_one_command_demo(members: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              caplog: pytest.LogCaptureFixture) -> None:
    """`make coop` (python -m kws_rpc.lab.coop_demo): embedded broker, in-process workers, exact output line;
    everyone speaks the embedded broker's MQTT 3.1.1 from the start, so the broker logs no refused MQTT 5
    probe ('Invalid connection') in a healthy run."""
    import json
    import re

    from kws_rpc.lab.coop_demo import main

    out = tmp_path / "coop.json"
    with caplog.at_level(logging.INFO):
        main(["--models", *members, "--limit", "24", "--policy", "majority", "--report", str(out), "--no-progress"])
    assert not [r for r in caplog.records if "Invalid connection" in r.getMessage()]
    text = capsys.readouterr().out
    assert re.search(r"^Accuracy: \d{1,3}\.\d{3}%$", text, re.M), text
    rep = json.loads(out.read_text())
    assert rep["clips"] == 24 and rep["embedded"] and len(rep["workers"]) == len(members)
    assert rep["protocol"].startswith("MQTT 3.1.1")
    assert rep["bytes_per_clip_message"] < rep["senml_json_base64_f32_clip_bytes"]
    assert f"Accuracy: {100 * rep['accuracy']:.3f}%" in text


def test_cli_weighted_policy_weighs_each_vote_by_its_model(members: list[str], tmp_path: Path,
                                                            test_audio) -> None:
    """--policy weighted reads per-model weights from the manifest and applies them to votes known by the
    model that cast them: with all the weight on one member (and the others' weight 0), every decision
    is that member's own answer, whatever the worker-id order."""
    import json

    from kws_rpc.lab.coop_demo import main
    from kws_rpc.lab.data import LABELS

    names = [KwsModel(m).name for m in members]
    chosen = names[-1]
    manifest = tmp_path / "ensemble.json"
    manifest.write_text(json.dumps({"members": names, "weighted": {
        "weights": {n: float(n == chosen) for n in names}, "space": "log", "fitted": {"split": "test-only"}}}))
    out = tmp_path / "coop.json"
    main(["--models", *members, "--limit", "24", "--policy", "weighted", "--weights", str(manifest),
          "--report", str(out), "--no-progress"])
    rep = json.loads(out.read_text())
    assert rep["policy"] == "weighted" and rep["weights"]["weights"][chosen] == 1.0
    own = [next(v["label"] for v in c["votes"].values() if v["model"] == chosen) for c in rep["per_clip"]]
    assert [c["decided"] for c in rep["per_clip"]] == own
    assert rep["per_policy_accuracy"]["weighted"] == rep["per_model_accuracy"][chosen]["accuracy"]
    offline = offline_votes(members, test_audio[0][:24])
    w = ensemble.Weights.from_dict(json.loads(manifest.read_text())["weighted"])
    y = [LABELS.index(c["label"]) for c in rep["per_clip"]]  # the client's label order
    assert rep["accuracy"] == ensemble_fit.accuracy("weighted", offline, y, [names] * 24, w)


def test_cli_auto_policy_takes_the_out_of_fold_choice_for_its_members(members: list[str], tmp_path: Path) -> None:
    """--policy auto with a manifest fitted out of fold over train+val (trainers.stack) for exactly the
    live models takes the policy chosen there, with its weights, and runs no val split first; a manifest
    naming other models is not used that way."""
    import json

    from kws_rpc.lab.coop import oof_choice
    from kws_rpc.lab.coop_demo import main

    names = [KwsModel(m).name for m in members]
    chosen = names[-1]
    manifest = tmp_path / "ensemble.json"
    manifest.write_text(json.dumps({"members": names, "weighted": {
        "weights": {n: float(n == chosen) for n in names}, "space": "log",
        "fitted": {"split": "train+val out of fold (3-fold retraining)", "clips": 7200, "oof_choice": "weighted",
                   "oof_accuracy": {"majority": 0.97, "weighted": 0.98}}}}))
    out = tmp_path / "coop.json"
    main(["--models", *members, "--limit", "16", "--weights", str(manifest), "--report", str(out), "--no-progress"])
    rep = json.loads(out.read_text())
    assert rep["policy"] == "weighted" and rep["policy_choice"]["clips"] == 7200
    assert "end_to_end_s" not in rep["policy_choice"]  # no val run
    assert rep["per_policy_accuracy"]["weighted"] == rep["per_model_accuracy"][chosen]["accuracy"]
    w = ensemble.Weights.from_dict(json.loads(manifest.read_text())["weighted"])
    assert oof_choice(w, set(names)) == "weighted"
    assert oof_choice(w, set(names[:-1])) is None  # other live models: choose on val instead
    assert oof_choice(dataclasses.replace(w, fitted={"split": "val", "oof_choice": "weighted"}), set(names)) is None


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


# --- losslessness and membership (issue 9) ------------------------------------------------------------

def test_ballot_republishes_with_backoff_then_times_out() -> None:
    now = [0.0]
    b = Ballot(timeout_s=10.0, retry_s=1.0, silence_s=100.0, clock=lambda: now[0])
    b.worker_online("a")
    b.worker_online("b")
    clip = b.open("r0", 0)
    schedule = []
    for t in (0.0, 1.0, 2.0, 3.0, 6.9, 7.0):
        now[0] = t
        _, due = b.pump(lambda: b.decided >= 1, timeout_s=0.0)
        schedule.append(len(due))
    assert schedule == [0, 1, 0, 1, 0, 1] and clip.publishes == 4  # at 1, 3 and 7 s
    assert b.vote("r0", "a", "m", np.ones(2, np.float32))
    now[0] = 10.0
    assert b.wait(1, timeout_s=0.0)
    assert clip.reason == "timeout" and not clip.ok and clip.missing == ["b"]


def test_ballot_drops_a_silent_worker_but_not_everybody_in_an_outage() -> None:
    now = [0.0]
    p = np.ones(2, np.float32)
    b = Ballot(timeout_s=100.0, retry_s=50.0, silence_s=5.0, clock=lambda: now[0])
    for w in ("a", "ghost"):
        b.worker_online(w)
    for i in range(3):
        b.open(f"r{i}", i)
    now[0] = 20.0  # nobody voted (a broker outage): nobody is dropped
    b.pump(lambda: False, timeout_s=0.0)
    assert set(b.workers) == {"a", "ghost"}
    for i in range(3):
        b.vote(f"r{i}", "a", "m", p)
    now[0] = 24.0
    b.pump(lambda: False, timeout_s=0.0)
    assert "ghost" in b.workers  # silent since 0 s, but a only voted 4 s ago
    now[0] = 25.5
    b.pump(lambda: False, timeout_s=0.0)
    assert "ghost" in b.dropped and "ghost" not in b.workers
    assert all(b.clips[f"r{i}"].reason == "worker dropped" and b.clips[f"r{i}"].ok for i in range(3))
    assert b.clips["r0"].excused == {"ghost"} and b.open("r3", 3).expected == {"a"}
    assert not b.vote("r3", "intruder", "m", p) and b.refused["unknown worker"] == 1
    assert b.vote("r3", "ghost", "m", p) and "ghost" in b.workers  # a vote brings it back


def _publisher(url: str, name: str) -> mqtt.Client:
    settings = BrokerSettings.from_url(url)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:6]}",
                      protocol=mqtt.MQTTv311)
    pub.connect(settings.host, settings.port)
    pub.loop_start()
    return pub


def _close(pub: mqtt.Client) -> None:
    pub.loop_stop()
    pub.disconnect()


def test_ghost_online_status_is_dropped_not_awaited_forever(any_broker: str, members: list[str], clips) -> None:
    """A retained ONLINE status of a worker that never votes: the run ends, the ghost is dropped."""
    audio, labels, names = clips
    dep = deployment()
    workers = start_workers(members[:2], any_broker, dep)
    pub = _publisher(any_broker, "ghostwriter")
    ghost = pb.WorkerStatus(worker_id="ghost", state=pb.WorkerStatus.ONLINE, model=metadata_to_proto(workers[0].card))
    pub.publish(Topics(dep).status("ghost"), ghost.SerializeToString(), qos=1, retain=True).wait_for_publish(5)
    client = coop(any_broker, dep, 3, silence_s=1.5, timeout_s=30.0)
    try:
        assert "ghost" in client.discover()
        run = client.run(audio[:16])
        rep = report(run, client.label_indices(labels[:16]), names[:16], client.labels(), "mean")
    finally:
        pub.publish(Topics(dep).status("ghost"), b"", qos=1, retain=True).wait_for_publish(5)
        _close(pub)
        stop_all(workers, client)
    assert rep["dropped_workers"] == ["ghost"] and rep["lost"] == 0 and rep["missing_predictions"] == 0
    assert rep["excused_predictions"] > 0 and "timeout" not in rep["decided_by"]
    assert all(set(c["votes"]) == {"w0", "w1"} for c in rep["per_clip"])


def test_worker_with_other_labels_is_left_out(any_broker: str, members: list[str], clips) -> None:
    """A worker whose model has another label set is left out with a warning; its votes are refused."""
    audio, labels, names = clips
    dep = deployment()
    workers = start_workers(members[:2], any_broker, dep)
    pub = _publisher(any_broker, "odd")
    odd = pb.WorkerStatus(worker_id="odd", state=pb.WorkerStatus.ONLINE, model=metadata_to_proto(workers[0].card))
    del odd.model.labels[:]
    odd.model.labels.extend(["cat", "dog", "bird"])
    pub.publish(Topics(dep).status("odd"), odd.SerializeToString(), qos=1, retain=True).wait_for_publish(5)
    client = coop(any_broker, dep, 2)
    try:
        client.discover()
        vote = pb.PredictResponse(request_id="x", worker_id="odd", prediction=pb.Prediction(probabilities=[1, 0, 0]))
        pub.publish(Topics(dep).predictions("odd"), vote.SerializeToString(), qos=1).wait_for_publish(5)
        run = client.run(audio[:12])
        rep = report(run, client.label_indices(labels[:12]), names[:12], client.labels(), "mean")
    finally:
        pub.publish(Topics(dep).status("odd"), b"", qos=1, retain=True).wait_for_publish(5)
        _close(pub)
        stop_all(workers, client)
    assert "odd" in client.excluded and "odd" not in client.ballot.live()
    assert rep["lost"] == 0 and rep["decided_by"] == {"all voted": 12}


def test_unknown_invalid_and_repeated_votes_are_refused_and_counted(any_broker: str, members: list[str],
                                                                    clips) -> None:
    """A client on the broker answers every clip, before the real workers can, as an id with no status,
    and as real workers with NaNs and with the wrong number of probabilities: none of it counts, every
    refusal is counted, the decisions are the members' own."""
    audio, labels, names = clips
    dep = deployment()
    topics = Topics(dep)
    workers = start_workers(members[:2], any_broker, dep)
    client = coop(any_broker, dep, 2)
    spy = _publisher(any_broker, "spy")
    opener = client.ballot.open

    def open_and_spoof(rid: str, index: int):  # the spoofed votes reach the broker before the clip does
        clip = opener(rid, index)
        for wid, probs in (("intruder", [0, 0, 0, 0, 0, 0, 0, 1]), ("w0", [float("nan")] * 8), ("w1", [1.0])):
            vote = pb.PredictResponse(request_id=rid, worker_id=wid, prediction=pb.Prediction(probabilities=probs))
            spy.publish(topics.predictions(wid), vote.SerializeToString(), qos=1).wait_for_publish(5)
        return clip

    client.ballot.open = open_and_spoof  # type: ignore[method-assign]
    try:
        run = client.run(audio[:12])
        rep = report(run, client.label_indices(labels[:12]), names[:12], client.labels(), "mean")
    finally:
        _close(spy)
        stop_all(workers, client)
    assert rep["lost"] == 0 and rep["missing_predictions"] == 0
    assert all(set(c["votes"]) == {"w0", "w1"} for c in rep["per_clip"])
    offline = offline_votes(members[:2], audio[:12])
    assert rep["per_policy_accuracy"]["mean"] == ensemble_fit.accuracy("mean", offline, client.label_indices(labels[:12]))
    refused = rep["refused_votes"]
    assert [refused.get(k) for k in ("unknown worker", "not finite", "wrong length")] == [12, 12, 12], refused


def test_worker_answers_a_republished_clip_from_its_cache(any_broker: str, members: list[str]) -> None:
    dep = deployment()
    topics = Topics(dep)
    worker = start_workers(members[:1], any_broker, dep)[0]
    votes: list[bytes] = []
    two = threading.Event()

    def on_message(c: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if topics.voter_of(msg.topic) is None:  # amqtt 0.12 also hands a new subscriber retained statuses
            return
        votes.append(msg.payload)
        if len(votes) >= 2:
            two.set()

    subscribed = threading.Event()
    listener = _publisher(any_broker, "listener")
    listener.on_message = on_message
    listener.on_subscribe = lambda *_: subscribed.set()
    listener.subscribe(topics.all_predictions, qos=0)
    shape = worker.card.feature.shape
    req = pb.PredictRequest(request_id="again", features=pb.Features(tensor=pb.Tensor(
        dtype=pb.FLOAT32, shape=list(shape), data=np.zeros(shape, np.float32).tobytes())))
    try:
        assert subscribed.wait(10)
        for _ in range(2):
            listener.publish(topics.clips, req.SerializeToString(), qos=2).wait_for_publish(5)
        assert two.wait(10), f"{len(votes)} votes"
    finally:
        _close(listener)
        worker.stop()
    assert worker.answered == ["again"] and worker.repeats == 1 and votes[0] == votes[1]


def _readme_mqtt_recipe() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("<!-- mqtt-recipe -->")
    block = text[start:].split("```bash\n", 1)[1].split("```", 1)[0]
    return block


def test_readme_mqtt_recipe_on_stock_mosquitto(test_audio, tmp_path: Path) -> None:
    """The README's recipe, verbatim but for the port: stock `mosquitto -p PORT`, three kws-workers and
    the coop client on all 800 test clips (after 800 val clips for the policy): exit 0, 0 missing votes,
    and the accuracy the same models give offline."""
    import json
    import re

    if not Mosquitto.available():
        pytest.skip("mosquitto is not installed")
    from tests.support.network import free_port

    recipe = _readme_mqtt_recipe()
    assert "mosquitto -p 1883 &" in recipe and "kws-coop" in recipe
    port = free_port()
    script = recipe.replace("1883", str(port))
    script += f"\nstatus=$?\ncp results/coop_report.json {tmp_path}/report.json\nkill $(jobs -p)\nwait\nexit $status\n"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["clips"] == 800 and rep["missing_predictions"] == 0 and rep["lost"] == 0
    assert rep["decided_by"] == {"all voted": 800} and len(rep["workers"]) == 3
    audio, labels, _ = test_audio
    models = re.findall(r"kws-worker --model (\S+)", recipe)
    assert len(models) == 3
    offline = offline_votes([str(REPO / m) for m in models], audio)
    voters = [[KwsModel(REPO / m).name for m in models]] * len(labels)  # the fitted policy weighs by model
    weights = ensemble.Weights.from_dict(rep["weights"]) if "weights" in rep else None
    expected = ensemble_fit.accuracy(rep["policy"], offline, labels, voters, weights)
    assert re.search(rf"^Accuracy: {100 * expected:.3f}%$", proc.stdout, re.M), (expected, proc.stdout[-500:])


def test_stock_mosquitto_killed_mid_run_loses_nothing(stock_mosquitto: Mosquitto, members: list[str], clips) -> None:
    """A stock, non-persistent mosquitto SIGKILLed and restarted mid-run: sessions, queued clips and
    retained statuses are gone. Everybody reconnects, workers say ONLINE again, the client republishes
    what got no vote: every clip is decided with every worker's vote."""
    audio, labels, names = clips
    dep = deployment()
    workers = start_workers(members, stock_mosquitto.url, dep)
    client = coop(stock_mosquitto.url, dep, len(workers), timeout_s=30.0)
    pid = stock_mosquitto.proc.pid
    restarter = threading.Timer(0.5, stock_mosquitto.start)

    def crash() -> None:  # the run goes on publishing while the broker is down
        stock_mosquitto.stop(kill=True)
        restarter.start()

    _gate(client, CLIPS // 3, crash)
    try:
        run = client.run(audio)
        rep = report(run, client.label_indices(labels), names, client.labels(), "mean")
    finally:
        restarter.join()
        stop_all(workers, client)
    assert run.ballot.decided == CLIPS and rep["lost"] == 0 and rep["missing_predictions"] == 0, rep["decided_by"]
    restarter.join()
    assert stock_mosquitto.proc.pid != pid
    for w in workers:
        assert len(w.answered) == len(set(w.answered)), f"{w.worker_id} ran a clip twice"
    offline = offline_votes(members, audio)
    assert rep["per_policy_accuracy"]["mean"] == ensemble_fit.accuracy("mean", offline, client.label_indices(labels))


def test_replicas_share_a_members_clips_one_vote_per_clip(stock_mosquitto: Mosquitto, members: list[str],
                                                           clips) -> None:
    """Two replicas of member w0 (one in-process, one a process SIGKILLed mid-run) and w1: the replicas
    split w0's clips through a shared subscription, every clip gets exactly one w0 vote, nothing is lost."""
    audio, labels, names = clips
    dep = deployment()
    url = stock_mosquitto.url
    settings = BrokerSettings.from_url(url)
    w1 = Worker(WorkerConfig(members[1], settings, dep, "w1")).start()
    a = Worker(WorkerConfig(members[0], settings, dep, "w0", replica="a")).start()
    b = subprocess.Popen([sys.executable, "-m", "kws_rpc.mqtt.worker", "--model", members[0], "--broker", url,
                          "--deployment", dep, "--worker-id", "w0", "--replica", "b", "--log-level", "WARNING"],
                         cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert b.stdout is not None and "worker w0" in b.stdout.readline()  # connected and subscribed
    client = coop(url, dep, 2, timeout_s=30.0)

    def kill_b_after_it_voted() -> None:  # w0 votes that replica a did not cast came from b
        client.ballot.pump(lambda: sum("w0" in c.votes for c in client.ballot.clips.values()) > len(a.answered), 30.0)
        b.send_signal(signal.SIGKILL)

    _gate(client, CLIPS // 2, kill_b_after_it_voted)
    try:
        run = client.run(audio)
        rep = report(run, client.label_indices(labels), names, client.labels(), "mean")
    finally:
        b.kill()
        b.wait()
        stop_all([a, w1], client)
    assert rep["lost"] == 0 and rep["missing_predictions"] == 0
    assert all(set(c["votes"]) == {"w0", "w1"} for c in rep["per_clip"]), (rep["decided_by"], rep["dropped_workers"])
    assert 0 < len(set(a.answered)) < CLIPS, "replica a answered every clip: b never shared the load"
    offline = offline_votes(members[:2], audio)
    assert rep["per_policy_accuracy"]["mean"] == ensemble_fit.accuracy("mean", offline, client.label_indices(labels))
