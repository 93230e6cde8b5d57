"""The Big/Little cascade as the Pi runs it: ``Cascade`` classifies a clip with the little model and asks
big, over a transport, when little is unsure.

Beside it, what every edge command shares: where models and thresholds live, the ask rule, the
calibrated thresholds and budgets, big answering locally, and the server flags. The runs over a data
set split (``edge.lab.evaluate``, ``edge.lab.calibrate``, ``edge.lab.payload``) import this module and
not one another.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from edge.transports import OVER_BUDGET, GrpcTransport, RestSpecTransport, RetryPolicy, Transport
from kws_rpc.audio.features import resample
from kws_rpc.audio.wav import read_wav
from kws_rpc.model.core import InferenceCore
from kws_rpc.model.kws_model import KwsModel, softmax_margin
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.security import tls
from kws_rpc.security.auth import client_token
from kws_rpc.wire import encodings, handlers
from kws_rpc.wire.encodings import REST_ROUTES

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
CASCADE_FILE = ROOT / "models" / "cascade.json"  # the installed thresholds, which runs read by default
RESULTS = ROOT / "results"  # where runs write (gitignored); committed figures are refreshed on purpose
# Used only when models/cascade.json is missing (run `make calibrate`): a margin of 0.2 sends the clips
# on which the little model is clearly unsure, a few percent of the test split for a decent little model.
DEFAULT_THRESHOLD = 0.2
LITTLE = ROOT / "models" / "little.tflite"
BIG = ROOT / "models" / "big_int8.tflite"  # what the server serves by default (make server)


def repo_relative(path: str | Path) -> str:
    """A path as recorded in result files: relative to the repository, or only its name if outside it, so
    no file records where one developer keeps the checkout."""
    p = Path(path).resolve()
    return p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else p.name


def should_ask(margin: float | np.ndarray, threshold: float) -> bool | np.ndarray:
    """The cascade rule of the reference: ask big when the margin is at most the threshold."""
    return margin <= threshold


def load_threshold(path: Path = CASCADE_FILE, route: str = "rest-spec") -> tuple[float, str]:
    """The threshold calibrated for this route to big (smaller requests buy more asks within the
    same budget), else the file's reference-format threshold, else DEFAULT_THRESHOLD; and its source."""
    if not path.is_file():
        return DEFAULT_THRESHOLD, "default"
    doc = json.loads(path.read_text())
    route = encodings.route(route)
    ways = doc.get("ways", {})  # the file's key for its routes
    key = route if route in ways else encodings.legacy_route(route)  # files may name routes by first names
    if key in ways:
        return float(ways[key]["threshold"]), f"{repo_relative(path)}, calibrated on val for {route}"
    return float(doc["threshold"]), f"{repo_relative(path)}, calibrated on val for rest-spec"


def calibrated_budget(doc: dict[str, Any], route: str, clips: int) -> float | None:
    """The budget a cascade.json document's threshold for ``way`` was calibrated to spend, scaled from the
    calibration's clip count to a run of ``clips`` clips; None if it was calibrated for accuracy."""
    budget = doc.get("target", {}).get("budget_mb")
    if isinstance(budget, dict):
        route = encodings.route(route)
        budget = budget.get(route, budget.get(encodings.legacy_route(route)))
    if budget is None or not doc.get("val_clips"):
        return None
    return float(budget) * clips / int(doc["val_clips"])


def little_on_file(little: KwsModel, wav_path: Path) -> tuple[np.ndarray, int, float, float]:
    """(audio as recorded, label index, margin, milliseconds) for one clip read from disk, like the Pi does.
    The little model sees the clip zero-padded to 1 s; big is sent the clip as recorded, as the reference
    sends the file (about a tenth of the clips are shorter than 1 s; the server pads them the same way)."""
    t0 = time.perf_counter()
    audio, rate = read_wav(str(wav_path))
    if rate != little.feature_config.sample_rate:  # sent on as 16 kHz, which the spec body says it is
        audio, rate = resample(audio, rate, little.feature_config.sample_rate), little.feature_config.sample_rate
    probs = little.predict(little.features(audio, rate))[0]
    ms = 1000 * (time.perf_counter() - t0)
    return audio, int(np.argmax(probs)), float(softmax_margin(probs)), ms


@dataclasses.dataclass(frozen=True)
class Decision:
    """One clip's answer, and what it took."""

    label: str  # big's label when it answered, else little's
    little_label: str
    margin: float  # little's top-1 minus top-2 probability
    asked: bool  # margin at most the threshold: big was asked (or would have been, over budget)
    big_label: str | None  # None when not asked or when the remote call failed
    bytes_sent: int  # payload bytes of the requests sent for this clip
    little_ms: float  # read + decode + pad + features + little inference
    remote_ms: float  # the whole ask, retries included; 0 when not asked
    attempts: int = 0
    error: str = ""  # why big did not answer (OVER_BUDGET: the request would pass the byte budget)


class Cascade:
    """Little on every clip; big, over ``transport``, when little's margin is at most ``threshold``. A
    failed ask keeps little's answer. ``max_bytes`` caps the payload bytes sent over the cascade's life
    (a data plan): a request that would pass it is not sent (``Decision.error == OVER_BUDGET``)."""

    def __init__(self, little: KwsModel, threshold: float, transport: Transport, max_bytes: int | None = None) -> None:
        self.little, self.threshold, self.transport, self.max_bytes = little, threshold, transport, max_bytes
        self.spent = 0  # payload bytes sent so far
        self.calls = 0  # asks that went to the network (over-budget ones excluded)
        self.over_budget = False  # set at the first request the budget refused

    def classify_file(self, wav_path: Path, clip_id: str) -> Decision:
        """A clip read from disk, like the Pi does (the read and decode count in little_ms)."""
        audio, idx, margin, little_ms = little_on_file(self.little, wav_path)
        return self._decide(audio, idx, margin, little_ms, clip_id)

    def classify(self, audio: np.ndarray, rate: int, clip_id: str) -> Decision:
        """A clip already in memory at ``rate`` Hz."""
        t0 = time.perf_counter()
        if rate != self.little.feature_config.sample_rate:
            audio, rate = resample(audio, rate, self.little.feature_config.sample_rate), self.little.feature_config.sample_rate
        probs = self.little.predict(self.little.features(audio, rate))[0]
        ms = 1000 * (time.perf_counter() - t0)
        return self._decide(audio, int(np.argmax(probs)), float(softmax_margin(probs)), ms, clip_id)

    def _decide(self, audio: np.ndarray, idx: int, margin: float, little_ms: float, clip_id: str) -> Decision:
        little_label = self.little.labels[idx]
        if not should_ask(margin, self.threshold):
            return Decision(little_label, little_label, margin, False, None, 0, little_ms, 0.0)
        t0 = time.perf_counter()
        answer = self.transport.ask(audio, clip_id, None if self.max_bytes is None else self.max_bytes - self.spent)
        remote_ms = 1000 * (time.perf_counter() - t0)
        self.spent += answer.bytes_sent
        if answer.error == OVER_BUDGET:
            self.over_budget = True
        else:
            self.calls += 1
        return Decision(answer.label or little_label, little_label, margin, True, answer.label, answer.bytes_sent,
                        little_ms, remote_ms, answer.attempts, answer.error)


def local_answer(big: KwsModel, request: pb.PredictRequest | dict[str, Any]) -> str:
    """Big's label for a request as the server would answer it (spec body dict or PredictRequest): the
    server's own transport-free handlers, in this process."""
    core = InferenceCore({big.name: big}, big.name)
    if isinstance(request, dict):
        request = handlers.spec_request(json.dumps(request).encode())[0]
    return handlers.predict(core, request).prediction.label


def add_remote_args(ap: argparse.ArgumentParser, timeout_s: float, device_flag: str = "--device") -> None:
    """How an edge command reaches big: the flags client, calibrate and payload share (``listen`` names
    the SenML device id --device-id, its --device being the microphone)."""
    g = ap.add_argument_group("the server")
    g.add_argument("--url", default="http://127.0.0.1:8080/", help="REST gateway (spec body, PUT)")
    g.add_argument("--grpc", default="127.0.0.1:50051",
                   help="gRPC server host:port, an ip:port list, or dns:///name:port (several servers: balanced "
                        "with gRPC round_robin and health checks)")
    g.add_argument(device_flag, dest="device", default=hex(uuid.getnode()), help="SenML base name 'bn' (device id)")
    g.add_argument("--timeout", type=float, default=timeout_s, help="seconds per remote attempt (default %(default)s)")
    g.add_argument("--token", default=None,
                   help="bearer token for the server, or @FILE to read it from a file (default $KWS_TOKEN)")
    tls.add_client_args(ap)


def server_credentials(a: argparse.Namespace, prog: str) -> tuple[tls.ClientTls | None, str | None]:
    """The TLS settings (checked: the files exist and load) and bearer token the server flags of
    add_remote_args give; a bad one exits with ``prog: error: ...``."""
    try:
        client_tls, token = tls.client_tls_from_args(a), client_token(a.token)
        if client_tls is not None:
            client_tls.check()
    except (ValueError, OSError) as e:
        raise SystemExit(f"{prog}: error: {e}") from None
    return client_tls, token


def remote(route: str, a: argparse.Namespace, policy: RetryPolicy | None = None) -> Transport:
    """The transport for one route to big ("rest-spec", "rest-adpcm" or "grpc-<encoding>", see
    kws_rpc.wire.encodings.ROUTES), with the server flags' TLS settings and token."""
    route = encodings.route(route)
    policy = policy or RetryPolicy(timeout_s=a.timeout)
    client_tls, token = server_credentials(a, "kws-edge")
    if route in REST_ROUTES:
        return RestSpecTransport(a.url, a.device, policy, client_tls, token, wav_codec=REST_ROUTES[route])
    return GrpcTransport(a.grpc, route.split("-", 1)[1], policy, client_tls, token)
