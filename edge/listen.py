"""`kws-edge listen` (edge.cli wires it): the Pi listening, continuously, to a microphone, raw PCM on stdin or a WAV file.

The little model runs on the last second every hop (edge.stream); each detection is one JSON line on
stdout: {"t": seconds from the start of the input, "label", "score", "decided_by"}. A detection the
little is not sure of (below the detector's ``sure``) is sent to the server when one is given, and big
confirms, relabels or rejects it; the Pi keeps listening meanwhile. A server that is down or slow costs
the verification, never audio: the event is emitted as the little decided it, and counted. Logs and the
summary go to stderr; the exit status is 1 when audio was lost (an odd byte count, microphone overflows
or reopens) or a verification failed, 2 for an input that cannot be read or holds no audio, 0 otherwise.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edge.sources import SourceError, SourceStats, microphone, raw_stream, wav_file
from edge.stream import Detection, DetectorConfig, Listener
from kws_rpc.model.kws_model import KwsModel

log = logging.getLogger("kws.edge.listen")

DETECTOR_FILE = "listen.json"  # beside the models: what make bench-stream chose on val streams
FALLBACK_VERIFIER = "big_listen_int8"  # without one


@dataclasses.dataclass
class ListenStats:
    detections: int = 0  # the little's detections
    events: int = 0  # events emitted
    sure: int = 0  # emitted by the little alone, sure enough
    asked: int = 0  # sent to the server
    confirmed: int = 0  # ... that big confirmed
    relabelled: int = 0  # ... that big gave another keyword
    rejected: int = 0  # ... that big rejected (not a keyword, or one below the detector's confirm): no event
    verify_failed: int = 0  # ... with no usable answer: emitted as the little decided
    bytes_sent: int = 0


Verify = Callable[[np.ndarray, str], Any]  # (1 s of audio, request id) -> edge.transports.Answer


class EventSink:
    """Emits events as JSON lines, in the order of their detection, as soon as each is decided."""

    def __init__(self, out: TextIO, publish: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.out, self.publish = out, publish
        self._lock = threading.Lock()

    def emit(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.out.write(json.dumps(event) + "\n")
            self.out.flush()
            if self.publish is not None:
                self.publish(event)


class Session:
    """One listening run: a Listener, an optional verifier on a worker thread, and the counters."""

    def __init__(self, listener: Listener, sink: EventSink, verify: Verify | None, verifier_name: str) -> None:
        self.listener, self.sink, self.verify, self.verifier_name = listener, sink, verify, verifier_name
        self.stats = ListenStats()
        self._warned_no_score = False
        # close() waits for the verifications in flight (shutdown(wait=True))
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kws-verify") if verify else None

    def feed(self, block: np.ndarray) -> None:
        self._handle(self.listener.push(block))

    def _handle(self, detections: list[Detection]) -> None:
        for d in detections:
            self.stats.detections += 1
            if d.sure or self._pool is None:
                self.stats.sure += d.sure
                self._emit(d, d.label, "little", d.t)
            else:
                self.stats.asked += 1
                self._pool.submit(self._verify, d, time.monotonic())

    def _verify(self, d: Detection, asked_at: float) -> None:
        try:
            answer = self.verify(d.audio, f"listen-{d.t:.2f}")
        except Exception as e:  # a verifier must never take the listener down
            log.warning("verification of %s at %.2f s failed: %s", d.label, d.t, e)
            answer = None
        waited = time.monotonic() - asked_at
        if answer is not None:
            self.stats.bytes_sent += answer.bytes_sent
            confirm = self.listener.cfg.confirm
            if answer.label is not None and answer.score is None and confirm and not self._warned_no_score:
                self._warned_no_score = True  # e.g. the course's reference service: a label, no probability
                log.warning("%s answers without a probability, so the detector's confirm %.2f cannot apply: every "
                            "keyword it names stands, and more false accepts get through", self.verifier_name,
                            confirm)
        if answer is None or answer.label is None:
            self.stats.verify_failed += 1
            self._emit(d, d.label, "little", d.handed_t + waited, verify_error=getattr(answer, "error", "") or "failed")
        elif not self.listener.cfg.confirms(answer.label, answer.score):
            self.stats.rejected += 1
            log.info("%s at %.2f s (%.2f) rejected by %s: %s%s", d.label, d.t, d.score, self.verifier_name,
                     answer.label, "" if answer.score is None else f" at {answer.score:.2f}")
        else:
            if answer.label == d.label:
                self.stats.confirmed += 1
            else:
                self.stats.relabelled += 1
            extra = {} if answer.score is None else {"verifier_score": round(answer.score, 4)}
            self._emit(d, answer.label, self.verifier_name, d.handed_t + waited, little=d.label, **extra)

    def _emit(self, d: Detection, label: str, decided_by: str, t: float, **extra: Any) -> None:
        self.stats.events += 1
        self.sink.emit({"t": round(t, 3), "label": label, "score": round(d.score, 4), "decided_by": decided_by,
                        "detected_t": round(d.t, 3), **extra})

    def close(self) -> None:
        self._handle(self.listener.flush())  # a detection still settling when the input ended
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def blocks(a: argparse.Namespace, rate: int, stats: SourceStats, stop: threading.Event) -> Iterator[np.ndarray]:
    block_s = 0.1
    if a.input == "mic":
        return microphone(a.mic, rate, stats, stop, block_s, rate=a.rate, buffer_s=a.buffer)
    if a.input == "-":
        return raw_stream(sys.stdin.buffer, a.rate or rate, rate, stats, block_s)
    return wav_file(a.input, rate, stats, block_s, rate=a.rate)


def add_listen_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--input", default="mic", metavar="mic|-|FILE.wav",
                    help="mic: the default microphone (or --device); -: raw 16-bit mono little-endian PCM on "
                         "stdin (`arecord -q -t raw -f S16_LE -r 16000 -c 1 | kws-edge listen --input -`); or "
                         "a WAV file of any length (default %(default)s)")
    ap.add_argument("--device", dest="mic", default=None,
                    help="microphone: a PortAudio device name or index (`python -m sounddevice` lists them)")
    ap.add_argument("--rate", type=int, default=None,
                    help="input sample rate in Hz: stdin's (default 16000); the microphone's (default: its own); "
                         "a WAV file's header is read, and a different --rate is refused")
    ap.add_argument("--buffer", type=float, default=2.0,
                    help="seconds of microphone audio kept while the detector catches up; beyond it blocks "
                         "are dropped and counted as overflows (default %(default)s)")
    ap.add_argument("--detector", type=Path, default=None,
                    help="JSON detector settings (hop_ms, smooth, threshold, patience, refractory_s, sure, settle, "
                         "confirm), as calibrated on val streams (default: the model's entry in models/listen.json "
                         "if any)")
    ap.add_argument("--duration", type=float, default=None, help="stop after this many seconds of audio")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="a progress bar on stderr (default: on for a WAV file on a terminal)")


def run(a: argparse.Namespace, little: KwsModel, detector: DetectorConfig, verify: Verify | None = None,
        verifier_name: str = FALLBACK_VERIFIER, publish: Callable[[dict[str, Any]], None] | None = None,
        out: TextIO = sys.stdout) -> int:
    """Listens until the input ends, --duration, or SIGTERM/SIGINT; returns the exit status."""
    rate = little.feature_config.sample_rate
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda _n, _f: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)} \
        if threading.current_thread() is threading.main_thread() else {}
    source_stats = SourceStats()
    session = Session(Listener(little, detector), EventSink(out, publish), verify, verifier_name)
    bar = _progress(a)
    started = time.monotonic()
    cpu = time.process_time()
    status = 0
    try:
        for block in blocks(a, rate, source_stats, stop):
            if a.duration is not None:
                block = block[: max(0, round((a.duration - session.listener.seconds) * rate))]
            session.feed(block)
            if bar is not None:
                bar.update(len(block) / rate)
            if stop.is_set() or (a.duration is not None and session.listener.frames.frames
                                 and session.listener.seconds >= a.duration - 1e-9):
                break
    except SourceError as e:
        log.error("%s", e)
        status = 2
    finally:
        stop.set()
        session.close()
        if bar is not None:
            bar.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    summary = summarize(session, source_stats, time.monotonic() - started, time.process_time() - cpu)
    log.info("%s", summary)
    if status:
        return status
    if not session.listener.seconds and a.input != "mic":  # a recorder that failed, an empty file: say so
        log.error("%s held no audio: %s", "stdin" if a.input == "-" else a.input,
                  "is the recorder piping into kws-edge running?" if a.input == "-" else "the file has no samples")
        return 2
    return 1 if source_stats.lost or session.stats.verify_failed else 0


def summarize(session: Session, src: SourceStats, wall_s: float, cpu_s: float) -> str:
    s, audio = session.stats, session.listener.seconds
    cpu = f"{cpu_s / audio * 1000:.1f} ms CPU per s of audio" if audio else "no audio"
    parts = [f"{audio:.1f} s of audio in {wall_s:.1f} s ({cpu})",
             f"{session.listener.windows} windows, {s.detections} detections, {s.events} events"]
    if s.asked:
        parts.append(f"{s.asked} verified: {s.confirmed} confirmed, {s.relabelled} relabelled, {s.rejected} "
                     f"rejected, {s.verify_failed} failed (emitted as the little decided); {s.bytes_sent} bytes sent")
    lost = [f"{n} {what}" for n, what in ((src.odd_bytes, "odd trailing byte(s) dropped"),
                                          (src.overflows, "microphone overflows"),
                                          (src.reopens, "microphone reopens")) if n]
    parts.append("lost: " + ", ".join(lost) if lost else "no audio lost")
    return "; ".join(parts)


def _progress(a: argparse.Namespace) -> Any:
    show = a.progress if a.progress is not None else (a.input not in ("mic", "-") and sys.stderr.isatty())
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(unit="s", unit_scale=True, desc="listening", file=sys.stderr,
                bar_format="{desc}: {n:.0f} s of audio [{elapsed}, {rate_fmt}]")


@dataclasses.dataclass(frozen=True)
class Shipped:
    """What the models folder's detector file chose (read once; nothing without one): the listener, the
    server model its verified settings were chosen with, and the settings of each little."""

    models: Path
    doc: dict[str, Any]

    @classmethod
    def read(cls, models: Path) -> "Shipped":
        path = models / DETECTOR_FILE
        return cls(models, json.loads(path.read_text()) if path.is_file() else {})

    def little(self) -> Path:
        """The listener the file names, else the listening little (it can reject silence and other words),
        else the clip little."""
        for name in (self.doc.get("listener"), "little_listen"):
            if name and (self.models / f"{name}.tflite").is_file():
                return self.models / f"{name}.tflite"
        return self.models / "little.tflite"

    def verifier(self) -> str:
        """The server model the file's verified settings were chosen with, else big_listen_int8."""
        return self.doc.get("verifier") or FALLBACK_VERIFIER

    def detector(self, little: str, verified: bool) -> DetectorConfig:
        """The settings make bench-stream chose for this little (with or without a verifier); the defaults
        without a file."""
        return DetectorConfig.from_doc(self.doc, little, verified, str(self.models / DETECTOR_FILE)) if self.doc \
            else DetectorConfig()


def parser(prog: str) -> argparse.ArgumentParser:
    """Every flag but the MQTT ones (edge.cli adds those: the broker is another layer's)."""
    from edge.cascade import add_remote_args

    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_listen_args(ap)
    ap.add_argument("--models", type=Path, default=None,
                    help="folder of the shipped models (default $KWS_MODELS_DIR, else the installed ones)")
    ap.add_argument("--model", type=Path, default=None, help="the little .tflite (default: little_listen, else little)")
    ap.add_argument("--verify", choices=["none", "grpc", "rest"], default="none",
                    help="ask the server's --verify-model about unsure detections: over gRPC (--grpc, the window "
                         "as --verify-encoding) or REST (--url, the spec body with the window's WAV, ?model= "
                         "naming the model); --tls-* and --token as for kws-edge eval (default %(default)s)")
    ap.add_argument("--verify-model", default=None,
                    help="the served model that verifies: one that can reject, with _silence_ and _unknown_ "
                         f"outputs (default: the one the shipped {DETECTOR_FILE} was chosen with, big_stream_int8; "
                         "make server serves it)")
    ap.add_argument("--verify-encoding", default="logmel-q5z",
                    help="how the window travels: wav, or log-mel features computed here (default %(default)s, "
                         "about 800 bytes a request)")
    add_remote_args(ap, timeout_s=1.0, device_flag="--device-id")
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return ap


def with_model(url: str, model: str) -> str:
    """The gateway URL with ``?model=`` naming the model that answers the spec body."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query) + [("model", model)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def start(a: argparse.Namespace, ap: argparse.ArgumentParser,
          publisher: Callable[[], Any] | None = None) -> int:
    """Runs `kws-edge listen` with parsed flags; ``publisher`` makes the event publisher, if any (it is
    called with no arguments, then with each event, and closed at the end: its close() returns how many
    events were lost)."""
    from kws_rpc.model.shipped import models_dir

    logging.basicConfig(level=a.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    models = a.models or models_dir()
    try:
        shipped = Shipped.read(models)
        little = KwsModel(a.model or shipped.little())
        verified = a.verify != "none"
        detector = DetectorConfig.load(a.detector, little.name, verified) if a.detector is not None \
            else shipped.detector(little.name, verified)
        a.verify_model = a.verify_model or shipped.verifier()
        publish = publisher() if publisher is not None else None
    except (OSError, ValueError) as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    verify = None
    if a.verify != "none":
        from edge.cascade import server_credentials
        from edge.transports import GrpcTransport, RestSpecTransport, RetryPolicy

        client_tls, token = server_credentials(a, ap.prog)
        # one attempt, no waiting: a late verification is worth less than the next detection
        policy = RetryPolicy(timeout_s=a.timeout, retries=0, open_after=3, cooldown_s=10.0)
        try:
            if a.verify == "grpc":
                verify = GrpcTransport(a.grpc, a.verify_encoding, policy, client_tls, token, model=a.verify_model).ask
            else:
                verify = RestSpecTransport(with_model(a.url, a.verify_model), a.device, policy, client_tls,
                                           token).ask
        except ValueError as e:  # e.g. TLS settings with an http:// URL
            ap.exit(2, f"{ap.prog}: error: {e}\n")
    log.info("listening with %s (%d labels) every %d ms; detector %s", little.name, len(little.labels),
             detector.hop_ms, dataclasses.asdict(detector))
    status = run(a, little, detector, verify, verifier_name=a.verify_model, publish=publish)
    if publish is not None and publish.close():
        status = status or 1
    return status
