"""The inference worker: one model, one MQTT adapter onto InferenceCore.

It receives every clip of its deployment (QoS 2, persistent session: clips sent while it is away are
delivered once when it returns), runs its model and publishes a vote (PredictResponse, QoS 0, full
probabilities). Its retained WorkerStatus says ONLINE; its last will says OFFLINE, so clients know how
many votes to wait for. Anything it cannot use is logged and skipped; it never dies of a payload.

A client republishes a clip whose votes did not all arrive in time (a lost QoS 0 vote, a broker
restart). The worker answers each request id once: a repeat gets the cached vote again, without a
second inference (the last ``VOTE_CACHE`` answers are kept).

``kws-worker --model models/member_cnn.tflite --broker mqtt://127.0.0.1:1883``. There is deliberately no
built-in broker: a worker must not own the broker's lifetime. Use a real broker, ``kws-broker``
(the embedded one), or ``make coop`` for the all-in-one demo.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import queue
import signal
import socket
import threading
import time

import paho.mqtt.client as mqtt

from kws_rpc.errors import KwsError, clip, quote
from kws_rpc.model.core import InferenceCore
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.model.native import responsive_network_thread, tune_process
from kws_rpc.mqtt.connection import BrokerSettings, connect, make_client, negotiate
from kws_rpc.mqtt.options import add_broker_arguments, broker_settings
from kws_rpc.mqtt.topics import Topics, check_segment
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.wire import handlers
from kws_rpc.wire.codec import metadata_to_proto, parse

log = logging.getLogger("kws_rpc.mqtt.worker")  # not __name__: run with -m, that is __main__
VOTE_CACHE = 8192  # answered request ids remembered for repeats (~100 B each)


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    model_path: str
    broker: BrokerSettings
    deployment: str = "default"
    worker_id: str = ""  # empty = <model name>@<hostname>
    # Non-empty: this process is one replica of worker_id. Replicas share the clips through an MQTT shared
    # subscription ($share/..., mosquitto; not amqtt), so each clip goes to one of them, and vote as
    # worker_id: one vote per member however many replicas run.
    replica: str = ""

    def __post_init__(self) -> None:
        check_segment(self.deployment, "deployment")
        if self.replica:
            check_segment(self.replica, "replica")


class Worker:
    """Network thread (paho) parses and queues clips; one inference thread answers them in order."""

    def __init__(self, config: WorkerConfig, core: InferenceCore | None = None) -> None:
        self.config = config
        self._owns_core = core is None
        self.core = core or InferenceCore({"m": KwsModel(config.model_path)}, "m")
        self.card = self.core.model().card
        self.worker_id = check_segment(config.worker_id or f"{self.card.name}@{socket.gethostname()}", "worker id")
        self.topics = Topics(config.deployment)
        self.client: mqtt.Client | None = None  # made by start(), in the protocol the broker speaks
        self._inbox: queue.Queue[pb.PredictRequest | None] = queue.Queue()
        self._outbox: list[bytes] = []  # votes made while disconnected (QoS 0 would drop them)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name=f"worker-{self.worker_id}", daemon=True)
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self.answered: list[str] = []  # request ids, in order (tests check exactly-once delivery)
        self._votes: collections.OrderedDict[str, bytes] = collections.OrderedDict()  # id -> vote sent
        self.repeats = 0  # republished clips answered from the cache
        self.rejected = 0

    def _status(self, state: int) -> bytes:
        return pb.WorkerStatus(worker_id=self.worker_id, state=state, model=metadata_to_proto(self.card),
                               timestamp_ms=int(time.time() * 1000)).SerializeToString()

    # paho callbacks (network thread) -------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason: mqtt.ReasonCode, props: object) -> None:
        if reason.is_failure:
            log.warning("%s: broker refused the connection: %s", self.worker_id, reason)
            return
        # Subscribing here (not once after connect) re-establishes the subscription after every reconnect,
        # even if the broker lost the session.
        clips = f"$share/{self.config.deployment}.{self.worker_id}/{self.topics.clips}" if self.config.replica \
            else self.topics.clips
        client.subscribe([(clips, 2), (self.topics.status(self.worker_id), 1)])
        client.publish(self.topics.status(self.worker_id), self._status(pb.WorkerStatus.ONLINE), 1, True)
        with self._lock:
            pending, self._outbox = self._outbox, []
            self.connected.set()
        for vote in pending:
            client.publish(self.topics.predictions(self.worker_id), vote, qos=0)
        log.info("%s: connected (session present: %s), %d held votes sent", self.worker_id,
                 flags.session_present, len(pending))

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                       props: object) -> None:
        with self._lock:
            self.connected.clear()
        log.info("%s: disconnected (%s); paho reconnects", self.worker_id, reason)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.topics.status(self.worker_id):
            self._on_own_status(client, msg.payload)
            return
        if msg.topic != self.topics.clips:
            # amqtt 0.12 has been seen handing a fresh subscriber other topics' retained messages
            # (worker status) under load; a WorkerStatus even parses as a PredictRequest.
            log.debug("%s: ignored a message on %s (not the clips topic)", self.worker_id, msg.topic)
            return
        try:
            req = parse(pb.PredictRequest, msg.payload)
            if not req.request_id:
                raise KwsError("a clip needs a request_id (votes are matched to clips by it)")
        except KwsError as e:
            self._reject()
            log.warning("%s: skipped a payload of %d bytes on %s: %s", self.worker_id, len(msg.payload),
                        msg.topic, clip(str(e)))
            return
        self._inbox.put(req)

    def _on_own_status(self, client: mqtt.Client, payload: bytes) -> None:
        """Someone else said this worker is OFFLINE (a stale last will after a broker restart, or a
        spoofer where no ACL stops it): while running, say ONLINE again."""
        try:
            state = parse(pb.WorkerStatus, payload).state
        except KwsError:
            state = pb.WorkerStatus.STATE_UNSPECIFIED
        if state != pb.WorkerStatus.ONLINE and not self._stopping.is_set():
            log.warning("%s: my status topic says %s: publishing ONLINE again", self.worker_id,
                        pb.WorkerStatus.State.Name(state) if state in pb.WorkerStatus.State.values() else "garbage")
            client.publish(self.topics.status(self.worker_id), self._status(pb.WorkerStatus.ONLINE), 1, True)

    def _reject(self) -> None:
        with self._lock:
            self.rejected += 1

    # inference thread -----------------------------------------------------------------------------
    def _answer(self, req: pb.PredictRequest) -> bytes:
        return handlers.predict(self.core, req, self.worker_id).SerializeToString()

    def _serve(self) -> None:
        while (req := self._inbox.get()) is not None:
            if (vote := self._votes.get(req.request_id)) is not None:
                self.repeats += 1
                self._send(vote)
                continue
            try:
                vote = self._answer(req)
            except KwsError as e:
                self._reject()
                log.warning("%s: skipped clip %s: %s", self.worker_id, quote(req.request_id, 40), clip(str(e)))
                continue
            except Exception:  # a bug, but one foreign clip must not silence this worker for the rest
                self._reject()
                log.exception("%s: failed on clip %s", self.worker_id, quote(req.request_id, 40))
                continue
            self.answered.append(req.request_id)
            self._votes[req.request_id] = vote
            if len(self._votes) > VOTE_CACHE:
                self._votes.popitem(last=False)
            self._send(vote)

    def _send(self, vote: bytes) -> None:
        """Publishes a vote now, or holds it until the next connection (QoS 0 would drop it)."""
        with self._lock:
            if not self.connected.is_set():
                self._outbox.append(vote)
                return
        if self.client.publish(self.topics.predictions(self.worker_id), vote, qos=0).rc == mqtt.MQTT_ERR_NO_CONN:
            with self._lock:
                self._outbox.append(vote)

    # lifecycle ------------------------------------------------------------------------------------
    def start(self, wait_s: float | None = 10.0) -> "Worker":
        """Connects in the background; with wait_s, blocks until connected (TimeoutError otherwise)."""
        limits = negotiate(self.config.broker, wait_s)
        replica = f"-{self.config.replica}" if self.config.replica else ""
        # A replica keeps no session: mosquitto goes on handing shared-subscription messages to the stored
        # session of a replica that died, where they wait for ever; without one, its share goes to the
        # others at once, and the client republishes what the dead replica held.
        self._persistent = not self.config.replica
        self.client = make_client(self.config.broker, f"kws-worker-{self.config.deployment}-{self.worker_id}{replica}",
                                  persistent=self._persistent, limits=limits)
        self.client.will_set(self.topics.status(self.worker_id), self._status(pb.WorkerStatus.OFFLINE), 1, True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self._thread.start()
        connect(self.client, self.config.broker, persistent=self._persistent)
        if wait_s is not None and not self.connected.wait(wait_s):
            raise TimeoutError(f"{self.worker_id}: no connection to {self.config.broker.url} in {wait_s} s")
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Clean shutdown: finish queued clips, then say OFFLINE (retained) and disconnect."""
        self._stopping.set()
        self._inbox.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self.client is not None:
            if self.connected.is_set():
                info = self.client.publish(self.topics.status(self.worker_id),
                                           self._status(pb.WorkerStatus.OFFLINE), 1, True)
                try:
                    info.wait_for_publish(timeout_s)
                except (RuntimeError, ValueError) as e:
                    log.warning("%s: OFFLINE status not confirmed: %s", self.worker_id, e)
            self.client.disconnect()
            self.client.loop_stop()
        if self._owns_core:
            self.core.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="kws MQTT inference worker (one model, one vote per clip).")
    p.add_argument("--model", required=True, help="a .tflite with its .json card, e.g. models/member_cnn.tflite")
    p.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port "
                   "(no built-in broker: run one, or `kws-broker`)")
    p.add_argument("--deployment", default="default", help="topic namespace: kws/<deployment>/...")
    p.add_argument("--worker-id", default="", help="default: the MQTT user name, else <model name>@<hostname>")
    p.add_argument("--replica", default="", help="run as one replica of --worker-id (a name unique among them, "
                   "e.g. the host): replicas share its clips through a shared subscription (mosquitto), one "
                   "vote per clip")
    add_broker_arguments(p)
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tune_process()
    responsive_network_thread()
    try:
        settings = broker_settings(args.broker, args)
    except (ValueError, OSError) as e:
        p.error(str(e))
    # Behind the shipped ACL a worker may write only topics ending in its user name: same id by default.
    worker_id = args.worker_id or settings.username or ""
    if args.replica and not worker_id:
        p.error("--replica needs --worker-id (or --username): the member the replicas vote as")
    worker = Worker(WorkerConfig(args.model, settings, args.deployment, worker_id, args.replica))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker.start(wait_s=None)
    print(f"worker {worker.worker_id} ({worker.card.name}) on {settings.url}, deployment "
          f"{args.deployment}", flush=True)
    stop.wait()
    worker.stop()


if __name__ == "__main__":
    main()
