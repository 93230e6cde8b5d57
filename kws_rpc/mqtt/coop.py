"""The cooperative client as an MQTT participant: every live worker votes on every clip; a Ballot collects
the votes and decides when a clip is done. Which policy turns the votes into a label, and the runs over a
data set split, are the lab's (``kws_rpc.lab.coop``, the ``kws-coop`` command).

The client learns the live workers and their feature config from their retained status messages,
preprocesses each clip once (features as FLOAT16 when all workers share a config, else audio) and
publishes clips at QoS 2, keeping at most a window of undecided clips in flight: the broker's MQTT 5
Receive Maximum, or a conservative 16 on an MQTT 3.1.1 broker (mosquitto silently drops QoS 2 messages
past its in-flight limit). A clip is decided when every live worker has voted or the missing ones went
OFFLINE or silent; a clip still short of votes is republished after ``retry_s`` seconds (then doubling)
until its ``timeout_s``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence

import numpy as np
import paho.mqtt.client as mqtt

from kws_rpc.audio.features import FeatureConfig, log_mel
from kws_rpc.errors import KwsError
from kws_rpc.model.card import LABELS
from kws_rpc.mqtt.ballot import Ballot
from kws_rpc.mqtt.connection import BrokerLimits, BrokerSettings, ack_now, connect, make_client, negotiate
from kws_rpc.mqtt.payloads import audio_message, features_message, shared_config
from kws_rpc.mqtt.topics import Topics
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.wire.codec import parse

log = logging.getLogger("kws_rpc.mqtt.coop")  # not __name__: run with -m, that is __main__
SAMPLE_RATE = 16000
ENCODINGS = ("auto", "features", "audio")  # how clips are sent: log-mel features, PCM audio, or whichever fits
PREPROCESS_CHUNK = 32
WINDOW_PER_INFLIGHT = 2  # undecided clips per QoS 2 message the broker takes in flight


@dataclasses.dataclass
class Run:
    """What one pass over a set of clips produced: the ballot plus what it cost. The ballot is the
    client's own, so read it (``kws_rpc.lab.coop_report.report``) before the next run() resets it."""

    ballot: Ballot
    request_ids: list[str]
    payload_kind: str
    clip_bytes: list[int]
    preprocess_s: float
    publish_s: float  # preprocessing + publishing (interleaved)
    end_to_end_s: float  # preprocessing + publishing + collecting until the last clip is decided
    vote_bytes: list[int] = dataclasses.field(default_factory=list)
    feature_shape: tuple[int, ...] = ()  # of the float32 tensor a clip stands for (features or samples)
    published_to_decided_s: float = 0.0  # from the first clip's publication to the last clip's decision


@dataclasses.dataclass(frozen=True)
class CoopConfig:
    broker: BrokerSettings
    deployment: str = "default"
    client_id: str = "coop"
    timeout_s: float = 10.0  # per clip, from its first publication; then it counts as lost
    offline_grace_s: float = 3.0  # an OFFLINE worker is still awaited this long (broker restarts)
    min_workers: int = 1  # wait (up to discover_timeout_s) for at least this many live workers
    discover_s: float = 0.5  # after min_workers are live, how long to keep listening for more
    discover_timeout_s: float = 30.0
    encoding: str = "auto"
    interval_s: float = 0.0  # pause between clips (0 = as fast as the window allows); simulates a stream
    progress: bool = True
    retry_s: float = 1.0  # republish a clip still short of votes after this long, then doubling
    silence_s: float = 8.0  # drop a worker that owes votes and sent none this long while others voted
    labels: tuple[str, ...] = tuple(LABELS)  # the client's label order; workers with another set are left out


class CoopClient:
    """The MQTT participant: status and vote callbacks feed a Ballot; run() publishes and waits."""

    def __init__(self, config: CoopConfig) -> None:
        if config.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}")
        self.config = config
        self.topics = Topics(config.deployment)
        self.client: mqtt.Client | None = None  # made by start(), in the protocol the broker speaks
        self.limits = BrokerLimits(mqtt.MQTTv311, None)
        self.window = 1
        self.connected = threading.Event()
        self.ballot = Ballot(config.timeout_s, config.offline_grace_s, config.retry_s, config.silence_s)
        self.statuses: dict[str, pb.WorkerStatus] = {}
        self.excluded: dict[str, str] = {}  # worker id -> why its votes are not counted
        self._order: dict[str, np.ndarray] = {}  # worker id -> its probabilities' positions in our order
        self.rejected = 0  # unusable messages (statuses and votes)
        self._vote_bytes: list[int] = []
        self._configs: dict[tuple, FeatureConfig | None] = {}

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: mqtt.ReasonCode,
                    props: object) -> None:
        if reason.is_failure:
            log.warning("coop: broker refused the connection: %s", reason)
            return
        client.subscribe([(self.topics.all_status, 1), (self.topics.all_predictions, 1)])
        self.connected.set()

    def _on_disconnect(self, *_: object) -> None:
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        ack_now(client)
        try:
            if (voter := self.topics.voter_of(msg.topic)) is not None:
                self._on_vote(voter, parse(pb.PredictResponse, msg.payload), len(msg.payload))
            elif (wid := self.topics.worker_of(msg.topic)) is not None:
                self._on_status(wid, parse(pb.WorkerStatus, msg.payload))
        except KwsError as e:
            self.rejected += 1
            if self.topics.voter_of(msg.topic) is not None:
                self.ballot.reject("unparsable")
            log.warning("coop: skipped %d bytes on %s: %s", len(msg.payload), msg.topic, str(e)[:200])

    def _on_status(self, wid: str, status: pb.WorkerStatus) -> None:
        if status.worker_id != wid or status.state not in (pb.WorkerStatus.ONLINE, pb.WorkerStatus.OFFLINE):
            raise KwsError(f"status of {status.worker_id[:64]!r} (state {status.state}) on the topic of {wid!r}")
        if status.state == pb.WorkerStatus.OFFLINE:
            self.ballot.worker_offline(wid)
            log.info("coop: worker %s is OFFLINE", wid)
            return
        labels = list(status.model.labels)
        if sorted(labels) != sorted(self.config.labels) or len(set(labels)) != len(labels):
            why = f"its model {status.model.name!r} has labels {labels[:16]}, not {sorted(self.config.labels)}"
            if self.excluded.get(wid) != why:
                log.warning("coop: worker %s left out: %s", wid, why)
            self.excluded[wid] = why
            self.ballot.worker_offline(wid)
            return
        self.excluded.pop(wid, None)
        self._order[wid] = np.array([labels.index(name) for name in self.config.labels])
        self.statuses[wid] = status
        self.ballot.worker_online(wid, status)
        log.info("coop: worker %s is ONLINE (%s)", wid, status.model.name)

    def _on_vote(self, voter: str, resp: pb.PredictResponse, size: int) -> None:
        if resp.worker_id != voter:  # with the shipped ACL, the topic's id is the publisher's user name
            self.ballot.reject("identity mismatch")
            log.warning("coop: a vote for %r came on the topic of %r: refused", resp.worker_id[:64], voter)
            return
        order = self._order.get(resp.worker_id)
        if order is None:
            self.ballot.reject("excluded worker" if resp.worker_id in self.excluded else "unknown worker")
            return
        probs = np.asarray(resp.prediction.probabilities, dtype=np.float32)
        if len(probs) != len(order):
            self.ballot.reject("wrong length")
            log.warning("coop: vote of %s has %d probabilities, its model has %d labels: refused",
                        resp.worker_id, len(probs), len(order))
            return
        if not np.all(np.isfinite(probs)):
            self.ballot.reject("not finite")
            log.warning("coop: vote of %s on %s is not finite: refused", resp.worker_id, resp.request_id[:64])
            return
        if self.ballot.vote(resp.request_id, resp.worker_id, resp.prediction.model, probs[order]):
            self._vote_bytes.append(size)

    def start(self, wait_s: float = 10.0) -> "CoopClient":
        settings = self.config.broker
        self.limits = negotiate(settings, wait_s)
        # paho keeps the QoS 2 handshakes themselves within the broker's in-flight limit; the window of
        # undecided clips is twice that, so the broker holds at most one limit's worth per worker in its
        # queue (mosquitto's max_queued_messages: 1000 by default). 1.65 -> 1.45 s for 800 clips.
        self.window = WINDOW_PER_INFLIGHT * self.limits.inflight(settings.max_inflight)
        self.client = make_client(settings, f"kws-coop-{self.config.deployment}-{self.config.client_id}",
                                  limits=self.limits)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        # After the PUBCOMP that ends each clip's QoS 2 exchange, and after each vote: acknowledge at once
        # (see connection.ack_now; a stock mosquitto would otherwise hold the next vote 40 ms).
        self.client.on_publish = lambda client, *_: ack_now(client)
        connect(self.client, settings)
        if not self.connected.wait(wait_s):
            raise TimeoutError(f"coop: no connection to {settings.url} in {wait_s} s")
        log.info("coop: %s over %s, at most %d clips in flight", settings.url, self.limits.name, self.window)
        return self

    def stop(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()

    def discover(self) -> dict[str, pb.WorkerStatus]:
        """Live workers, after at least min_workers appeared and a short settle for the rest."""
        live = self.ballot.wait_for_workers(self.config.min_workers, self.config.discover_timeout_s)
        if len(live) < self.config.min_workers:
            raise TimeoutError(f"only {len(live)} of {self.config.min_workers} workers online on "
                               f"{self.topics.all_status} after {self.config.discover_timeout_s} s"
                               + (f" ({len(self.excluded)} left out: {self.excluded})" if self.excluded else ""))
        threading.Event().wait(self.config.discover_s)
        return self.ballot.live()

    def labels(self) -> list[str]:
        """The label order of every vote the client counts (workers' own orders are mapped onto it)."""
        return list(self.config.labels)

    def label_indices(self, y: Sequence[int]) -> list[int]:
        """Dataset label indices (kws_rpc.lab.data.LABELS) as indices into labels()."""
        return [self.config.labels.index(LABELS[int(i)]) for i in y]

    def _pump(self, done: Callable[[], bool], payloads: dict[str, bytes],
              progress: Callable[[int], None] | None = None, timeout_s: float | None = None) -> bool:
        """Waits until done() (True) or timeout_s (False), republishing clips the ballot says are due
        (while connected)."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if end is None else max(0.0, end - time.monotonic())
            finished, due = self.ballot.pump(done, left, progress)
            for clip in due:
                if self.connected.is_set() and clip.request_id in payloads:
                    log.info("coop: clip %s still short of %s: published again (#%d)", clip.request_id,
                             sorted(clip.expected - set(clip.votes)), clip.publishes)
                    self.client.publish(self.topics.clips, payloads[clip.request_id], qos=2)
            if finished:
                return True
            if end is not None and time.monotonic() >= end:
                return False

    def run(self, audio: np.ndarray) -> Run:
        """Publishes every clip, at most ``window`` undecided at a time, and waits until each is decided."""
        live = self.discover()
        self.ballot.reset()
        self._vote_bytes = []
        tag = uuid.uuid4().hex[:8]
        rids = [f"{tag}-{i:05d}" for i in range(len(audio))]
        payloads: dict[str, bytes] = {}  # kept for republishing until their clip is decided
        t0 = time.perf_counter()
        sizes: list[int] = []
        kinds: dict[str, int] = {}
        shape: tuple[int, ...] = ()
        preprocess_s = 0.0
        first_publish = 0.0
        room = lambda: len(self.ballot.clips) - self.ballot.decided < self.window  # noqa: E731
        bar = None
        if self.config.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(rids), desc=f"votes from {len(live)} workers", unit="clip")
        progress = (lambda n: bar.update(n - bar.n)) if bar else None
        # Features are computed chunk by chunk between publishes, so workers start on the first chunk
        # while the client computes the next one. The payload is decided per clip from the workers it
        # invites: one that joins mid-run with another feature config turns later clips into audio.
        for start in range(0, len(rids), PREPROCESS_CHUNK):
            chunk = audio[start : start + PREPROCESS_CHUNK]
            feats: dict[FeatureConfig, np.ndarray] = {}
            for j, rid in enumerate(rids[start : start + len(chunk)]):
                self._pump(room, payloads, progress)
                # A worker whose OFFLINE is still in its grace (a broker restart fires every will) is
                # probably coming back: new clips wait for it, or for the grace to end.
                if not self._pump(self.ballot.settled, payloads, progress, self.config.discover_timeout_s):
                    log.warning("coop: no live worker for %.0f s", self.config.discover_timeout_s)
                clip = self.ballot.open(rid, start + j)  # before publishing, so an early vote finds it
                cfg = self._payload_config(clip.invited)
                if cfg is not None:
                    if cfg not in feats:
                        tp = time.perf_counter()
                        feats[cfg] = log_mel(chunk, cfg)
                        preprocess_s += time.perf_counter() - tp
                    data, shape, kind = features_message(rid, feats[cfg][j], cfg), feats[cfg].shape[1:], "features-f16"
                else:
                    data, kind = audio_message(rid, chunk[j], SAMPLE_RATE), "audio-pcm16"
                payloads[rid] = data
                self.client.publish(self.topics.clips, data, qos=2)
                first_publish = first_publish or time.perf_counter()
                sizes.append(len(data))
                kinds[kind] = kinds.get(kind, 0) + 1
                if self.config.interval_s:
                    threading.Event().wait(self.config.interval_s)
            for rid in [r for r in payloads if self.ballot.clips[r].decided_s is not None]:
                del payloads[rid]
        t2 = time.perf_counter()
        self._pump(lambda: self.ballot.decided >= len(rids), payloads, progress)
        if bar:
            bar.close()
        t3 = time.perf_counter()
        kind = next(iter(kinds)) if len(kinds) == 1 else ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        return Run(self.ballot, rids, kind, sizes, preprocess_s, t2 - t0, t3 - t0, list(self._vote_bytes),
                   tuple(shape) or tuple(audio.shape[1:]), t3 - (first_publish or t3))

    def _payload_config(self, invited: frozenset[str]) -> FeatureConfig | None:
        """The feature config to send to these workers, or None to send audio."""
        if self.config.encoding == "audio" or not invited:
            return None
        key = (invited, tuple(id(self.statuses.get(w)) for w in sorted(invited)))
        if key not in self._configs:  # one decision per set of workers and statuses, not per clip
            self._configs = {key: shared_config([self.statuses[w] for w in sorted(invited) if w in self.statuses])}
        cfg = self._configs[key]
        if cfg is None and self.config.encoding == "features":
            raise KwsError("--encoding features: the live workers do not share one feature config")
        return cfg
