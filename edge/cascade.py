"""The cascade as every edge command runs it: where models and thresholds live, the little model on a
clip read from disk, the ask rule, the calibrated thresholds and budgets, big answering locally, and the
transports' flags. ``edge.lab.evaluate`` (the Pi's run), ``edge.lab.calibrate`` and ``edge.lab.payload`` import this
module and not one another.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from edge.transports import GrpcTransport, RestSpecTransport, RetryPolicy, Transport

from kws_rpc.audio.features import resample
from kws_rpc.audio.wav import read_wav
from kws_rpc.model.core import InferenceCore
from kws_rpc.model.kws_model import KwsModel, softmax_margin
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.security import tls
from kws_rpc.security.auth import client_token
from kws_rpc.wire import handlers
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
    if route in doc.get("ways", {}):
        return float(doc["ways"][route]["threshold"]), f"{repo_relative(path)}, calibrated on val for {route}"
    return float(doc["threshold"]), f"{repo_relative(path)}, calibrated on val for rest-spec"


def calibrated_budget(doc: dict[str, Any], route: str, clips: int) -> float | None:
    """The budget a cascade.json document's threshold for ``way`` was calibrated to spend, scaled from the
    calibration's clip count to a run of ``clips`` clips; None if it was calibrated for accuracy."""
    budget = doc.get("target", {}).get("budget_mb")
    if isinstance(budget, dict):
        budget = budget.get(route)
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


def local_answer(big: KwsModel, request: pb.PredictRequest | dict[str, Any]) -> str:
    """Big's label for a request as the server would answer it (spec body dict or PredictRequest): the
    server's own transport-free handlers, in this process."""
    core = InferenceCore({big.name: big}, big.name)
    if isinstance(request, dict):
        request = handlers.spec_request(json.dumps(request).encode())[0]
    return handlers.predict(core, request).prediction.label


def add_remote_args(ap: argparse.ArgumentParser, timeout_s: float) -> None:
    """How an edge command reaches big: the flags client, calibrate and payload share."""
    g = ap.add_argument_group("the server")
    g.add_argument("--url", default="http://127.0.0.1:8080/", help="REST gateway (spec body, PUT)")
    g.add_argument("--grpc", default="127.0.0.1:50051",
                   help="gRPC server host:port, an ip:port list, or dns:///name:port (several servers: balanced "
                        "with gRPC round_robin and health checks)")
    g.add_argument("--device", default=hex(uuid.getnode()), help="SenML base name 'bn' (device id)")
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
    policy = policy or RetryPolicy(timeout_s=a.timeout)
    client_tls, token = server_credentials(a, "kws-edge")
    if route in REST_ROUTES:
        return RestSpecTransport(a.url, a.device, policy, client_tls, token, wav_codec=REST_ROUTES[route])
    return GrpcTransport(a.grpc, route.split("-", 1)[1], policy, client_tls, token)
