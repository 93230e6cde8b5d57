"""Cooperative inference client: every live worker votes on every clip; an ensemble policy decides.

    python -m kws_rpc.mqtt.coop --broker mqtt://host:1883 --workers 3   # workers already running (kws-worker)
    python -m kws_rpc.lab.coop_demo                                # all-in-one demo: embedded broker + members

The client learns the live workers and their feature config from their retained status messages,
preprocesses each clip once (features as FLOAT16 when all workers share a config, else audio) and
publishes clips at QoS 2, keeping at most a window of undecided clips in flight: the broker's MQTT 5
Receive Maximum, or a conservative 16 on an MQTT 3.1.1 broker (mosquitto silently drops QoS 2 messages
past its in-flight limit). A clip is decided when every live worker has voted or the missing ones went
OFFLINE or silent; a clip still short of votes is republished after ``--retry`` seconds (then doubling)
until its ``--timeout``. The run exits 0 only if every clip was decided with a vote from every worker
that stayed alive; otherwise it names the clips it could not decide and exits 1. The ensemble policy is
chosen before the run (``--policy auto``) and reported on the requested split.

When the manifest's weights were fitted on out-of-fold votes over train+val (``python -m trainers.stack``:
7,200 clips, every member retrained per fold) and name exactly the live workers' models, ``--policy
auto`` takes the policy chosen there, with those weights if it is ``weighted``. Otherwise it runs the
val split first: the unfitted policies are scored by their val accuracy and ``weighted`` (one weight per
member model, kws_rpc.model.ensemble) by its 5-fold out-of-fold accuracy on the same val votes, so no policy
is scored on clips its own weights were fitted on; ties go to the simpler policy. When ``weighted`` wins
(or is asked for), the weights are the manifest's (``--weights``, models/ensemble.json) if they name
every live worker's model; otherwise they are fitted on this run's val votes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from kws_rpc.audio.features import FeatureConfig, mfcc
from kws_rpc.errors import KwsError
from kws_rpc.lab.coop_report import Run, clip_members, clip_votes, report
from kws_rpc.lab.data import LABELS, find_dataset, load_split
from kws_rpc.model import ensemble
from kws_rpc.model.threads import pin_native_threads, responsive_network_thread
from kws_rpc.mqtt.ballot import Ballot
from kws_rpc.mqtt.connection import BrokerLimits, BrokerSettings, ack_now, connect, make_client, negotiate
from kws_rpc.mqtt.options import add_broker_arguments, broker_settings
from kws_rpc.mqtt.payloads import audio_request, features_request, shared_config
from kws_rpc.mqtt.topics import Topics
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.wire.codec import parse

__all__ = ["CoopClient", "CoopConfig", "Run", "report", "main"]
log = logging.getLogger("kws_rpc.mqtt.coop")  # not __name__: run with -m, that is __main__
SAMPLE_RATE = 16000
PAYLOADS = ("auto", "features", "audio")
PREPROCESS_CHUNK = 32
WINDOW_PER_INFLIGHT = 2  # undecided clips per QoS 2 message the broker takes in flight
MODELS = Path(__file__).resolve().parents[2] / "models"
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
    timeout_s: float = 10.0  # per clip, from its first publication; then it counts as lost
    offline_grace_s: float = 3.0  # an OFFLINE worker is still awaited this long (broker restarts)
    min_workers: int = 1  # wait (up to discover_timeout_s) for at least this many live workers
    discover_s: float = 0.5  # after min_workers are live, how long to keep listening for more
    discover_timeout_s: float = 30.0
    payload: str = "auto"
    interval_s: float = 0.0  # pause between clips (0 = as fast as the window allows); simulates a stream
    progress: bool = True
    retry_s: float = 1.0  # republish a clip still short of votes after this long, then doubling
    silence_s: float = 8.0  # drop a worker that owes votes and sent none this long while others voted
    labels: tuple[str, ...] = tuple(LABELS)  # the client's label order; workers with another set are left out


class CoopClient:
    """The MQTT participant: status and vote callbacks feed a Ballot; run() publishes and waits."""

    def __init__(self, config: CoopConfig) -> None:
        if config.payload not in PAYLOADS:
            raise ValueError(f"payload must be one of {PAYLOADS}")
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
                        feats[cfg] = mfcc(chunk, cfg)
                        preprocess_s += time.perf_counter() - tp
                    data, shape, kind = features_request(rid, feats[cfg][j], cfg), feats[cfg].shape[1:], "features-f16"
                else:
                    data, kind = audio_request(rid, chunk[j], SAMPLE_RATE), "audio-pcm16"
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
        if self.config.payload == "audio" or not invited:
            return None
        key = (invited, tuple(id(self.statuses.get(w)) for w in sorted(invited)))
        if key not in self._configs:  # one decision per set of workers and statuses, not per clip
            self._configs = {key: shared_config([self.statuses[w] for w in sorted(invited) if w in self.statuses])}
        cfg = self._configs[key]
        if cfg is None and self.config.payload == "features":
            raise KwsError("--payload features: the live workers do not share one feature config")
        return cfg


def oof_choice(weights: ensemble.Weights | None, live_models: set[str]) -> str | None:
    """The policy chosen on out-of-fold votes over train+val (trainers.stack), if the manifest holds one
    for exactly these member models; else None (``--policy auto`` then chooses on a val run)."""
    if weights is None or not weights.out_of_fold:
        return None
    choice = weights.fitted.get("oof_choice")
    if choice not in ensemble.ALL_POLICIES or live_models != set(weights.weights):
        return None
    return choice


def failed_clips(run: Run, names: Sequence[str]) -> list[str]:
    """Clips decided without a vote from some worker that stayed alive (lost), or with no vote at all."""
    return [f"{name} ({clip.reason}; missing {', '.join(sorted(clip.expected - set(clip.votes))) or '-'})"
            for name, clip in zip(names, (run.ballot.clips[r] for r in run.request_ids)) if not clip.ok]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Cooperative keyword spotting over MQTT (ensemble of workers).")
    p.add_argument("--broker", required=True,
                   help="mqtt://host:port (mqtts:// for TLS) of the broker the workers use; for an all-in-one "
                        "demo with an embedded broker and in-process workers: python -m kws_rpc.lab.coop_demo")
    p.add_argument("--deployment", default="default")
    p.add_argument("--client-id", default="coop", help="fixed MQTT client id (persistent session)")
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.add_argument("--limit", type=int, default=0, help="only the first N clips (0 = all)")
    p.add_argument("--policy", default="auto", choices=("auto", *ensemble.ALL_POLICIES),
                   help="auto = the policy --weights chose on out-of-fold votes over train+val (trainers.stack) "
                        "when its members are the live workers' models, else run the val split first and take "
                        "the best policy there (weighted scored out of fold); weighted = the weights of --weights")
    p.add_argument("--weights", default=str(MODELS / "ensemble.json"),
                   help="manifest holding the weighted policy's fitted weights (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="wait for this many live workers (default %(default)s)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds a clip may take from its first publication; after that it counts as lost")
    p.add_argument("--retry", type=float, default=1.0,
                   help="republish a clip still short of votes after this many seconds (then doubling)")
    p.add_argument("--silence", type=float, default=8.0,
                   help="drop a worker (with a warning) that owes votes and sent none for this many seconds "
                        "while others voted: a stale retained ONLINE status must not stall the run")
    p.add_argument("--max-inflight", type=int, default=100,
                   help="QoS 2 clips in flight to the broker at most; capped by the broker's Receive Maximum "
                        "(read with an MQTT 5 probe), or by 16 where the broker cannot say (MQTT 3.1.1). "
                        f"The client keeps {WINDOW_PER_INFLIGHT}x as many clips undecided")
    p.add_argument("--payload", default="auto", choices=PAYLOADS)
    p.add_argument("--interval", type=float, default=0.0, help="seconds between clips (0 = as fast as the "
                   "window allows)")
    add_broker_arguments(p)
    p.add_argument("--report", default="results/coop_report.json", help="per-clip JSON report")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: list[str] | None = None, embedded: bool = False) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pin_native_threads()
    responsive_network_thread()
    url = args.broker
    try:
        settings = broker_settings(url, args, max_inflight=args.max_inflight)
    except (ValueError, OSError) as e:
        p.error(str(e))
    config = CoopConfig(settings, args.deployment, args.client_id, args.timeout,
                        min_workers=args.workers, payload=args.payload,
                        interval_s=args.interval, progress=not args.no_progress, retry_s=args.retry,
                        silence_s=args.silence)
    client = CoopClient(config).start()
    failed: list[str] = []
    try:
        root = find_dataset()
        result: dict[str, Any] = {"broker": url, "embedded": embedded}
        policy = args.policy
        weights = ensemble.load_weights(args.weights)
        if policy == "weighted" and weights is None:
            p.error(f"--policy weighted: {args.weights} holds no fitted weights (python -m kws_rpc.lab.compare "
                    "... --write-manifest), or use --policy auto")
        live_models = {s.model.name for s in client.statuses.values()}
        oof = oof_choice(weights, live_models)
        if policy == "auto" and oof:
            policy = oof
            result["policy_choice"] = {"split": weights.fitted["split"], "clips": weights.fitted.get("clips"),
                                       "scores": weights.fitted.get("oof_accuracy"), "chosen": policy,
                                       "from": args.weights}
            log.info("coop: policy %s, chosen on %s out-of-fold votes (%s)", policy, weights.fitted.get("clips"),
                     args.weights)
        elif policy == "auto":
            val_audio, val_y, val_names = load_split("val", root)
            val_run = client.run(val_audio)
            failed += [f"val/{f}" for f in failed_clips(val_run, val_names)]
            val_y = client.label_indices(val_y)
            val = report(val_run, val_y, val_names, client.labels(), "mean")
            val_clips = [val_run.ballot.clips[r] for r in val_run.request_ids]
            votes, members = clip_votes(val_clips), clip_members(val_clips)
            policy, scores = ensemble.choose_policy(votes, val_y, members=members)
            result["policy_choice"] = {"split": "val", "scores": scores, "chosen": policy,
                                       "weighted_scored_by": "5-fold out-of-fold accuracy on val",
                                       "end_to_end_s": val["end_to_end_s"]}
            live = {m for ms in members for m in ms}
            if policy == "weighted" and (weights is None or not live <= set(weights.weights)):
                probs, mask, names_ = ensemble.dense(votes, members)
                weights = ensemble.fit_weights(probs, val_y, names_, ensemble.cross_fit(
                    votes, val_y, members)["space"], mask)
                log.warning("coop: the stored weights do not name every live model %s: fitted on this val run",
                            sorted(live))
                result["policy_choice"]["weights_from"] = "this run's val votes"
            elif policy == "weighted":
                result["policy_choice"]["weights_from"] = args.weights
        audio, y, names = load_split(args.split, root)
        if args.limit:
            audio, y, names = audio[: args.limit], y[: args.limit], names[: args.limit]
        run = client.run(audio)
        failed += [f"{args.split}/{f}" for f in failed_clips(run, names)]
        y = client.label_indices(y)
        result.update(report(run, y, names, client.labels(), policy, weights))
        if weights is not None:
            result["weights"] = weights.as_dict()
        result["workers"] = {w: s.model.name for w, s in client.statuses.items()}
        result["excluded_workers"] = dict(client.excluded)
        result["protocol"], result["window"] = client.limits.name, client.window
        result["lost_clips"] = failed
    finally:
        client.stop()
    out = Path(args.report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{len(names)} {args.split} clips, {len(result['workers'])} workers, policy {policy}, payload "
          f"{result['payload']} ({result['bytes_per_clip_message']:.0f} B/clip), {result['end_to_end_s']:.2f} s, "
          f"missing votes {result['missing_predictions']}; report: {out}")
    for m, a in result["per_model_accuracy"].items():
        print(f"  {m:<16} {100 * a['accuracy']:.3f}%")
    print(f"Accuracy: {100 * result['accuracy']:.3f}%")
    for wid, why in result["excluded_workers"].items():
        print(f"warning: worker {wid} left out: {why}", file=sys.stderr)
    if result["dropped_workers"]:
        print(f"warning: dropped silent workers {result['dropped_workers']} (stale ONLINE status?)", file=sys.stderr)
    if failed:
        shown = "\n  ".join(failed[:50]) + (f"\n  ... and {len(failed) - 50} more" if len(failed) > 50 else "")
        print(f"error: {len(failed)} clips were not decided with a vote from every live worker "
              f"(see {out}):\n  {shown}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
