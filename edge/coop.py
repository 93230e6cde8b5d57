"""Cooperative inference client: every live worker votes on every clip; an ensemble policy decides.

    python -m edge.coop --split test                          # embedded broker + shipped members, in-process
    python -m edge.coop --broker mqtt://host:1883 --split test  # workers already running (kws-worker)

The client learns the live workers and their feature config from their retained status messages,
preprocesses each clip once (features as FLOAT16 when all workers share a config, else audio), publishes
every clip at QoS 2 without waiting, and decides each clip when every live worker has voted, a missing
one goes OFFLINE, or the clip's timeout passes. The ensemble policy is chosen on the val split
(``--policy auto``) and reported on the requested split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from kws.v1 import kws_pb2 as pb
from kws_rpc import ensemble
from kws_rpc.codec import parse
from kws_rpc.data import LABELS, find_dataset, load_split
from kws_rpc.errors import KwsError
from kws_rpc.features import FeatureConfig, mfcc
from kws_rpc.mqtt.ballot import Ballot
from kws_rpc.mqtt.broker import EmbeddedBroker
from kws_rpc.mqtt.connection import BrokerSettings, connect, make_client
from kws_rpc.mqtt.payloads import audio_request, features_request, shared_config
from kws_rpc.mqtt.report import Run, clip_votes, report
from kws_rpc.mqtt.topics import Topics
from kws_rpc.mqtt.worker import Worker, WorkerConfig

__all__ = ["CoopClient", "CoopConfig", "Run", "report", "start_local", "main"]
log = logging.getLogger(__name__)
SAMPLE_RATE = 16000
PAYLOADS = ("auto", "features", "audio")
PREPROCESS_CHUNK = 32
MODELS = Path(__file__).resolve().parent.parent / "models"
MEMBERS = ("big", "member_cnn", "member_dscnn")  # used when models/ensemble.json is absent


def default_members() -> list[str]:
    """The shipped ensemble as models/ensemble.json lists it (all members take one feature config)."""
    manifest = MODELS / "ensemble.json"
    names = json.loads(manifest.read_text())["members"] if manifest.is_file() else MEMBERS
    return [str(MODELS / f"{m}.tflite") for m in names]


@dataclasses.dataclass(frozen=True)
class CoopConfig:
    broker: BrokerSettings
    deployment: str = "default"
    client_id: str = "coop"
    timeout_s: float = 10.0  # per clip, from its publication
    offline_grace_s: float = 3.0  # an OFFLINE worker is still awaited this long (broker restarts)
    min_workers: int = 1  # wait (up to discover_timeout_s) for at least this many live workers
    discover_s: float = 0.5  # after min_workers are live, how long to keep listening for more
    discover_timeout_s: float = 30.0
    payload: str = "auto"
    interval_s: float = 0.0  # pause between clips (0 = publish all at once); simulates a live stream
    progress: bool = True


class CoopClient:
    """The MQTT participant: status and vote callbacks feed a Ballot; run() publishes and waits."""

    def __init__(self, config: CoopConfig) -> None:
        if config.payload not in PAYLOADS:
            raise ValueError(f"payload must be one of {PAYLOADS}")
        self.config = config
        self.topics = Topics(config.deployment)
        self.client = make_client(config.broker, f"kws-coop-{config.deployment}-{config.client_id}")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.connected = threading.Event()
        self.ballot = Ballot(config.timeout_s, config.offline_grace_s)
        self.statuses: dict[str, pb.WorkerStatus] = {}
        self.rejected = 0
        self._vote_bytes: list[int] = []

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: mqtt.ReasonCode,
                    props: object) -> None:
        if reason.is_failure:
            log.warning("coop: broker refused the connection: %s", reason)
            return
        client.subscribe([(self.topics.all_status, 1), (self.topics.predictions, 1)])
        self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic == self.topics.predictions:
                self._on_vote(parse(pb.PredictResponse, msg.payload), len(msg.payload))
            elif (wid := self.topics.worker_of(msg.topic)) is not None:
                self._on_status(wid, parse(pb.WorkerStatus, msg.payload))
        except KwsError as e:
            self.rejected += 1
            log.warning("coop: skipped %d bytes on %s: %s", len(msg.payload), msg.topic, e)

    def _on_status(self, wid: str, status: pb.WorkerStatus) -> None:
        if status.worker_id != wid or status.state not in (pb.WorkerStatus.ONLINE, pb.WorkerStatus.OFFLINE):
            raise KwsError(f"status of {status.worker_id!r} (state {status.state}) on the topic of {wid!r}")
        if status.state == pb.WorkerStatus.ONLINE:
            self.statuses[wid] = status
            self.ballot.worker_online(wid, status)
        else:
            self.ballot.worker_offline(wid)
        log.info("coop: worker %s is %s", wid, pb.WorkerStatus.State.Name(status.state))

    def _on_vote(self, resp: pb.PredictResponse, size: int) -> None:
        status = self.statuses.get(resp.worker_id)
        probs = np.asarray(resp.prediction.probabilities, dtype=np.float32)
        if status is not None and len(probs) != len(status.model.labels):
            raise KwsError(f"vote of {resp.worker_id} has {len(probs)} probabilities, "
                           f"its model has {len(status.model.labels)} labels")
        if self.ballot.vote(resp.request_id, resp.worker_id, resp.prediction.model, probs):
            self._vote_bytes.append(size)

    def start(self, wait_s: float = 10.0) -> "CoopClient":
        connect(self.client, self.config.broker)
        if not self.connected.wait(wait_s):
            raise TimeoutError(f"coop: no connection to {self.config.broker.url} in {wait_s} s")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def discover(self) -> dict[str, pb.WorkerStatus]:
        """Live workers, after at least min_workers appeared and a short settle for the rest."""
        live = self.ballot.wait_for_workers(self.config.min_workers, self.config.discover_timeout_s)
        if len(live) < self.config.min_workers:
            raise TimeoutError(f"only {len(live)} of {self.config.min_workers} workers online on "
                               f"{self.topics.all_status} after {self.config.discover_timeout_s} s")
        threading.Event().wait(self.config.discover_s)
        return self.ballot.live()

    def labels(self) -> list[str]:
        names = {tuple(s.model.labels) for s in self.ballot.live().values()}
        if len(names) != 1:
            raise KwsError(f"live workers disagree on labels: {sorted(names)}")
        return list(names.pop())

    def label_indices(self, y: Sequence[int]) -> list[int]:
        """Dataset label indices (kws_rpc.data.LABELS) as indices into the workers' label list."""
        names = self.labels()
        return [names.index(LABELS[int(i)]) for i in y]

    def run(self, audio: np.ndarray) -> Run:
        """Publishes every clip, then waits until each is decided."""
        live = self.discover()
        self.ballot.reset()
        self._vote_bytes = []
        tag = uuid.uuid4().hex[:8]
        rids = [f"{tag}-{i:05d}" for i in range(len(audio))]
        t0 = time.perf_counter()
        sizes: list[int] = []
        kinds: dict[str, int] = {}
        shape: tuple[int, ...] = ()
        preprocess_s = 0.0
        # Features are computed chunk by chunk between publishes, so workers start on the first chunk
        # while the client computes the next one. The payload is decided per clip from the workers it
        # invites: one that joins mid-run with another feature config turns later clips into audio.
        for start in range(0, len(rids), PREPROCESS_CHUNK):
            chunk = audio[start : start + PREPROCESS_CHUNK]
            feats: dict[FeatureConfig, np.ndarray] = {}
            for j, rid in enumerate(rids[start : start + len(chunk)]):
                clip = self.ballot.open(rid, start + j)  # before publishing, so an early vote finds it
                cfg = self._payload_config(clip.invited)
                if cfg is not None:
                    if cfg not in feats:
                        tp = time.perf_counter()
                        feats[cfg] = mfcc(chunk, cfg)
                        preprocess_s += time.perf_counter() - tp
                    data, shape, kind = features_request(rid, feats[cfg][j], cfg), feats[cfg].shape[1:], "features-f16"
                else:
                    data, kind = audio_request(rid, chunk[j], SAMPLE_RATE), "audio-pcm16"
                self.client.publish(self.topics.clips, data, qos=2)
                sizes.append(len(data))
                kinds[kind] = kinds.get(kind, 0) + 1
                if self.config.interval_s:
                    threading.Event().wait(self.config.interval_s)
        t2 = time.perf_counter()
        bar = None
        if self.config.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(rids), desc=f"votes from {len(live)} workers", unit="clip")
        self.ballot.wait(len(rids), progress=(lambda n: bar.update(n - bar.n)) if bar else None)
        if bar:
            bar.close()
        t3 = time.perf_counter()
        kind = next(iter(kinds)) if len(kinds) == 1 else ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        return Run(self.ballot, rids, kind, sizes, preprocess_s, t2 - t0, t3 - t0, list(self._vote_bytes),
                   tuple(shape) or tuple(audio.shape[1:]))

    def _payload_config(self, invited: frozenset[str]) -> FeatureConfig | None:
        """The feature config to send to these workers, or None to send audio."""
        if self.config.payload == "audio" or not invited:
            return None
        cfg = shared_config([self.statuses[w] for w in sorted(invited) if w in self.statuses])
        if cfg is None and self.config.payload == "features":
            raise KwsError("--payload features: the live workers do not share one feature config")
        return cfg


def start_local(models: Sequence[str], deployment: str) -> tuple[EmbeddedBroker, list[Worker]]:
    """The one-command demo: an embedded amqtt broker on loopback and one in-process worker per model."""
    broker = EmbeddedBroker().start()
    settings = BrokerSettings.from_url(broker.url)
    workers = [Worker(WorkerConfig(m, settings, deployment, f"w{i}-{Path(m).stem}")).start()
               for i, m in enumerate(models)]
    return broker, workers


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Cooperative keyword spotting over MQTT (ensemble of workers).")
    p.add_argument("--broker", help="mqtt://host:port of running workers; absent = embedded broker + in-process "
                   "workers for --models")
    p.add_argument("--models", nargs="+", default=default_members(),
                   help="members to start when --broker is absent (default: models/ensemble.json)")
    p.add_argument("--deployment", default="default")
    p.add_argument("--client-id", default="coop", help="fixed MQTT client id (persistent session)")
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.add_argument("--limit", type=int, default=0, help="only the first N clips (0 = all)")
    p.add_argument("--policy", default="auto", choices=("auto", *ensemble.POLICIES),
                   help="auto = run the val split first and take the best policy there")
    p.add_argument("--workers", type=int, default=0, help="wait for this many live workers (default 1, or "
                   "all --models when embedded)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-clip timeout, s")
    p.add_argument("--payload", default="auto", choices=PAYLOADS)
    p.add_argument("--interval", type=float, default=0.0, help="seconds between clips (0 = all at once)")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--tls-ca")
    p.add_argument("--report", default="bench/results/coop_report.json")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    broker, workers = (None, []) if args.broker else start_local(args.models, args.deployment)
    url = args.broker or broker.url  # type: ignore[union-attr]
    settings = BrokerSettings.from_url(url, username=args.username, password=args.password, tls_ca=args.tls_ca)
    config = CoopConfig(settings, args.deployment, args.client_id, args.timeout,
                        args.workers or len(workers) or 1, payload=args.payload, interval_s=args.interval,
                        progress=not args.no_progress)
    client = CoopClient(config).start()
    try:
        root = find_dataset()
        result: dict[str, Any] = {"broker": url, "embedded": broker is not None}
        policy = args.policy
        if policy == "auto":
            val_audio, val_y, val_names = load_split("val", root)
            val_run = client.run(val_audio)
            val_y = client.label_indices(val_y)
            val = report(val_run, val_y, val_names, client.labels(), "mean")
            policy, scores = ensemble.choose_policy(
                clip_votes([val_run.ballot.clips[r] for r in val_run.request_ids]), val_y)
            result["policy_choice"] = {"split": "val", "scores": scores, "chosen": policy,
                                       "end_to_end_s": val["end_to_end_s"]}
        audio, y, names = load_split(args.split, root)
        if args.limit:
            audio, y, names = audio[: args.limit], y[: args.limit], names[: args.limit]
        run = client.run(audio)
        y = client.label_indices(y)
        result.update(report(run, y, names, client.labels(), policy))
        result["workers"] = {w: s.model.name for w, s in client.statuses.items()}
    finally:
        client.stop()
        for w in workers:
            w.stop()
        if broker is not None:
            broker.stop()
    out = Path(args.report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{len(names)} {args.split} clips, {len(result['workers'])} workers, policy {policy}, payload "
          f"{result['payload']} ({result['bytes_per_clip_message']:.0f} B/clip), {result['end_to_end_s']:.2f} s, "
          f"missing votes {result['missing_predictions']}; report: {out}")
    for m, a in result["per_model_accuracy"].items():
        print(f"  {m:<16} {100 * a['accuracy']:.3f}%")
    print(f"Accuracy: {100 * result['accuracy']:.3f}%")


if __name__ == "__main__":
    main()
