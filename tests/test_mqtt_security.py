"""MQTT on a network with attackers: mosquitto with the shipped TLS + password + ACL configuration
(deploy/mosquitto-secure.conf, deploy/mosquitto.acl) and the generated dev PKI; a spoofing client that
votes in other workers' names, under invented ids and says a live worker is OFFLINE. With the ACL it
changes no decision; without it, the test records what the client-side checks still catch."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from kws_rpc.lab.coop_report import report
from kws_rpc.model import ensemble
from kws_rpc.mqtt.broker import EmbeddedBroker, TlsFiles
from kws_rpc.mqtt.connection import BrokerSettings, negotiate
from kws_rpc.mqtt.coop import CoopClient, CoopConfig
from kws_rpc.mqtt.topics import Topics
from kws_rpc.mqtt.worker import Worker, WorkerConfig
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from tests.support.mosquitto import Mosquitto
from test_mqtt import deployment, member_paths, offline_votes

REPO = Path(__file__).resolve().parent.parent
USERS = ("coop", "w0", "w1", "w2", "mallory", "pi1", "pi2", "home")  # mallory: a valid account with no ACL block
CLIPS = 16


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from kws_rpc.security.certs import make_dev_pki

    return make_dev_pki(tmp_path_factory.mktemp("pki"), clients=USERS)


@pytest.fixture(scope="module")
def secure_broker(pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    if not Mosquitto.available():
        pytest.skip("mosquitto is not installed")
    d = tmp_path_factory.mktemp("mosq")
    passwd = d / "kws.passwd"
    for i, user in enumerate(USERS):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwd), user, f"{user}-pw"],
                       check=True, capture_output=True)
    passwd.chmod(0o600)
    broker = Mosquitto(config=REPO / "deploy" / "mosquitto-secure.conf", workdir=d, overrides={
        "cafile": str(pki["ca.pem"]), "certfile": str(pki["server.pem"]), "keyfile": str(pki["server.key"]),
        "password_file": str(passwd), "acl_file": str(REPO / "deploy" / "mosquitto.acl")})
    with broker:
        yield broker


@pytest.fixture(scope="module")
def secure_amqtt(pki: dict[str, Path]) -> Iterator[EmbeddedBroker]:
    """The embedded broker with the same users and rules, over TLS."""
    tls = TlsFiles(str(pki["server.pem"]), str(pki["server.key"]), str(pki["ca.pem"]))
    with EmbeddedBroker(users={u: f"{u}-pw" for u in USERS}, workers=("w0", "w1", "w2"), tls=tls) as broker:
        yield broker


@pytest.fixture(params=["mosquitto", "amqtt"])
def secure(request: pytest.FixtureRequest) -> Mosquitto | EmbeddedBroker:
    return request.getfixturevalue("secure_broker" if request.param == "mosquitto" else "secure_amqtt")


def settings(broker: Mosquitto | EmbeddedBroker, pki: dict[str, Path], user: str | None, ca: str = "ca.pem",
             password: str | None = None) -> BrokerSettings:
    return BrokerSettings.from_url(f"mqtts://127.0.0.1:{broker.port}", tls_ca=str(pki[ca]), username=user,
                                   password=password or (f"{user}-pw" if user else None))


def test_amqtt_refusals(secure_amqtt: EmbeddedBroker, pki: dict[str, Path]) -> None:
    """amqtt speaks MQTT 3.1.1 only: refusals show as a connection that never completes."""
    assert negotiate(settings(secure_amqtt, pki, "w0")).receive_maximum is None
    with pytest.raises(ConnectionError):
        negotiate(settings(secure_amqtt, pki, "w0", ca="other-ca.pem"), timeout_s=2)
    for bad in (settings(secure_amqtt, pki, "coop", password="wrong"), settings(secure_amqtt, pki, None)):
        client = CoopClient(CoopConfig(bad, deployment(), progress=False))
        with pytest.raises(TimeoutError):
            client.start(wait_s=2)
        client.stop()


def test_refusals(secure_broker: Mosquitto, pki: dict[str, Path]) -> None:
    assert negotiate(settings(secure_broker, pki, "w0")).receive_maximum == 100  # deploy's max_inflight_messages
    with pytest.raises(PermissionError):
        negotiate(settings(secure_broker, pki, "w0", password="wrong"), timeout_s=2)
    with pytest.raises(PermissionError):
        negotiate(settings(secure_broker, pki, None), timeout_s=2)  # no anonymous access
    with pytest.raises(ConnectionError):  # the client trusts another CA: the broker's certificate fails
        negotiate(settings(secure_broker, pki, "w0", ca="other-ca.pem"), timeout_s=2)
    plain = BrokerSettings.from_url(f"mqtt://127.0.0.1:{secure_broker.port}", username="coop", password="coop-pw")
    client = CoopClient(CoopConfig(plain, deployment(), progress=False))
    with pytest.raises(TimeoutError):  # plaintext on the TLS port never gets a CONNACK
        client.start(wait_s=2)
    client.stop()


def test_each_pi_publishes_only_its_own_events(secure_broker: Mosquitto, pki: dict[str, Path]) -> None:
    """deploy/mosquitto.acl: a listening Pi writes kws/<its user>/events and nothing else there; home reads
    every Pi's events; an account with no block (mallory) reads none."""
    import threading

    from kws_rpc.mqtt.connection import make_client

    got: dict[str, list[str]] = {"home": [], "mallory": []}
    subscribed = {u: threading.Event() for u in got}
    readers = []
    for user in got:
        c = make_client(settings(secure_broker, pki, user), f"{user}-{uuid.uuid4().hex[:6]}", persistent=False)
        c.on_message = lambda _c, _u, m, user=user: got[user].append(f"{m.topic} {m.payload.decode()}")
        c.on_subscribe = lambda *_a, user=user: subscribed[user].set()
        c.connect("127.0.0.1", secure_broker.port)
        c.loop_start()
        c.subscribe("kws/+/events", qos=1)
        readers.append(c)
    try:
        assert all(e.wait(5) for e in subscribed.values())
        for user, topic in (("pi1", "kws/pi1/events"), ("pi1", "kws/pi2/events"), ("pi2", "kws/pi2/events")):
            c = make_client(settings(secure_broker, pki, user), f"{user}-{uuid.uuid4().hex[:6]}", persistent=False)
            c.connect("127.0.0.1", secure_broker.port)
            c.loop_start()
            c.publish(topic, f"from {user}", qos=1).wait_for_publish(5)
            c.loop_stop()
            c.disconnect()
        deadline = time.monotonic() + 5
        while len(got["home"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a refused publish would have arrived by now
        assert sorted(got["home"]) == ["kws/pi1/events from pi1", "kws/pi2/events from pi2"]
        assert got["mallory"] == []
    finally:
        for c in readers:
            c.loop_stop()
            c.disconnect()


class Spoofer:
    """Tries, for each clip the test hands it, everything a client on the broker could do: a one-hot
    "yes" vote in w0's own name and topic, the same on its own topic, one under an invented id; and,
    once, an OFFLINE status for w0."""

    def __init__(self, s: BrokerSettings, topics: Topics) -> None:
        from kws_rpc.mqtt.connection import make_client

        self.topics = topics
        self.client = make_client(s, f"spoof-{uuid.uuid4().hex[:6]}", persistent=False)
        self.client.connect(s.host, s.port)
        self.client.loop_start()
        offline = pb.WorkerStatus(worker_id="w0", state=pb.WorkerStatus.OFFLINE)
        self.client.publish(topics.status("w0"), offline.SerializeToString(), qos=1, retain=True).wait_for_publish(5)

    def spoof(self, rid: str) -> None:
        yes = [0.0] * 8
        yes[7] = 1.0
        for topic_id, payload_id in (("w0", "w0"), ("mallory", "w0"), ("mallory", "mallory"), ("intruder", "intruder")):
            vote = pb.PredictResponse(request_id=rid, worker_id=payload_id,
                                      prediction=pb.Prediction(label="yes", index=7, probabilities=yes))
            self.client.publish(self.topics.predictions(topic_id), vote.SerializeToString(), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _run_with_spoofer(worker_settings: dict[str, BrokerSettings], coop_settings: BrokerSettings,
                      spoof_settings: BrokerSettings, audio: np.ndarray) -> tuple[dict, CoopClient]:
    dep = deployment()
    topics = Topics(dep)
    members = member_paths()
    workers = [Worker(WorkerConfig(m, worker_settings[w], dep, w)).start() for w, m in zip(("w0", "w1", "w2"), members)]
    client = CoopClient(CoopConfig(coop_settings, dep, client_id=uuid.uuid4().hex[:6], min_workers=3,
                                   discover_s=0.2, progress=False)).start()
    spoofer = Spoofer(spoof_settings, topics)
    opener = client.ballot.open

    def open_and_spoof(rid: str, index: int):  # the spoofed votes reach the broker before the clip
        clip = opener(rid, index)
        spoofer.spoof(rid)
        return clip

    client.ballot.open = open_and_spoof  # type: ignore[method-assign]
    try:
        run = client.run(audio)
        labels = [0] * len(audio)
        rep = report(run, labels, [str(i) for i in range(len(audio))], client.labels(), "mean")
    finally:
        spoofer.close()
        client.stop()
        for w in workers:
            w.stop()
    return rep, client


def _decisions(rep: dict) -> list[str]:
    return [c["decided"] for c in rep["per_clip"]]


def test_spoofer_changes_no_decision_behind_the_acl(secure: Mosquitto | EmbeddedBroker, pki: dict[str, Path],
                                                    test_audio) -> None:
    audio = test_audio[0][:CLIPS]
    members = member_paths()
    rep, client = _run_with_spoofer({w: settings(secure, pki, w) for w in ("w0", "w1", "w2")},
                                    settings(secure, pki, "coop"), settings(secure, pki, "mallory"), audio)
    offline = offline_votes(members, audio)
    expected = [client.labels()[d] for d in ensemble.decide_all("mean", offline)]
    assert _decisions(rep) == expected
    assert rep["lost"] == 0 and rep["missing_predictions"] == 0 and rep["decided_by"] == {"all voted": CLIPS}
    assert all(set(c["votes"]) == {"w0", "w1", "w2"} for c in rep["per_clip"])
    # What got through the broker at all: on mosquitto, mallory's own topic (the ACL pattern lets every
    # user write its own), where the client refuses a payload in w0's name and mallory's own id (no
    # ONLINE status); amqtt, whose rules name the workers, lets nothing of mallory's through.
    refused = rep["refused_votes"]
    if isinstance(secure, Mosquitto):
        assert refused.get("identity mismatch", 0) >= 1 and refused.get("unknown worker", 0) >= 1
    else:
        assert not refused.get("identity mismatch") and not refused.get("unknown worker")
    assert "w0" in client.ballot.live()  # the fake OFFLINE never reached the client


def test_spoofer_without_acl_what_the_client_still_catches(test_audio) -> None:
    """A stock, anonymous broker: invented ids and ids that differ from their topic are refused, but a
    vote in w0's own name on w0's own topic cannot be told from w0's: it wins the race and is counted.
    That is what the ACL is for."""
    if not Mosquitto.available():
        pytest.skip("mosquitto is not installed")
    audio = test_audio[0][:CLIPS]
    with Mosquitto() as broker:
        s = BrokerSettings.from_url(broker.url)
        rep, client = _run_with_spoofer({w: s for w in ("w0", "w1", "w2")}, s, s, audio)
    refused = rep["refused_votes"]
    assert refused.get("identity mismatch", 0) >= CLIPS and refused.get("unknown worker", 0) >= 2 * CLIPS
    assert rep["lost"] == 0 and all(set(c["votes"]) <= {"w0", "w1", "w2"} for c in rep["per_clip"])
    assert "w0" in client.ballot.live()  # the fake OFFLINE: w0 read it on its own topic and said ONLINE again
    w0_yes = sum(1 for c in rep["per_clip"] if "w0" in c["votes"] and c["votes"]["w0"]["label"] == "yes")
    assert w0_yes >= CLIPS // 2, "impersonation of w0 without an ACL (documented limit) no longer observed"


def test_mutual_tls_on_mosquitto(pki: dict[str, Path], secure_broker: Mosquitto,
                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    """The shipped config with its `require_certificate` line switched on: a client certificate from the
    dev CA gets in (with its password), none or one from another CA does not."""
    d = tmp_path_factory.mktemp("mtls")
    conf = d / "mtls.conf"
    text = (REPO / "deploy" / "mosquitto-secure.conf").read_text()
    assert "#require_certificate true" in text
    conf.write_text(text.replace("#require_certificate true", "require_certificate true"))
    passwd = secure_broker.dir / "kws.passwd"
    with Mosquitto(config=conf, workdir=d, overrides={
            "cafile": str(pki["ca.pem"]), "certfile": str(pki["server.pem"]), "keyfile": str(pki["server.key"]),
            "password_file": str(passwd), "acl_file": str(REPO / "deploy" / "mosquitto.acl")}) as broker:
        base = settings(broker, pki, "w0")
        good = BrokerSettings.from_url(base.url, tls_ca=base.tls_ca, tls_cert=str(pki["w0.pem"]),
                                       tls_key=str(pki["w0.key"]), username="w0", password="w0-pw")
        assert negotiate(good).receive_maximum == 100
        foreign = BrokerSettings.from_url(base.url, tls_ca=base.tls_ca, tls_cert=str(pki["other-client.pem"]),
                                          tls_key=str(pki["other-client.key"]), username="w0", password="w0-pw")
        for refused in (base, foreign):
            client = CoopClient(CoopConfig(refused, deployment(), progress=False))
            with pytest.raises((ConnectionError, TimeoutError)):
                client.start(wait_s=3)
            client.stop()
