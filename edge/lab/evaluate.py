"""`kws-edge eval` (`make client`): the Big/Little cascade over a data set split, as the Raspberry Pi runs it.

One clip at a time, read from disk (``edge.cascade.Cascade``): decode the WAV, pad to 1 s, run the little
int8 model; when its score margin (top-1 minus top-2 probability) is at most the threshold, ask the big
model over REST (the reference's SenML body) or gRPC. A failed ask keeps the little answer, so a dead or slow server costs
accuracy and the run still goes to the end; it then exits 1 and logs how many asks failed. Prints the
reference's two lines and writes a per-clip JSON report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from edge.cascade import (CASCADE_FILE, DEFAULT_THRESHOLD, LITTLE, RESULTS, Cascade, add_remote_args,
                          calibrated_budget, load_threshold, repo_relative, server_credentials)
from edge.lab.cascade_report import MB, ClipRecord, headline, summarize, write_report
from edge.transports import GrpcTransport, RestSpecTransport, RetryPolicy, Transport
from kws_rpc.audio.wav import WAV_CODECS
from kws_rpc.lab.data import DATASET_DIR, LABELS, find_dataset, label_of, split_names
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.security.tls import ClientTls
from kws_rpc.wire.encodings import ENCODING_CHOICES, REST_ROUTES, TENSOR_ENCODINGS, request_id
from kws_rpc.wire.encodings import route as canonical_route

log = logging.getLogger("edge.lab.evaluate")  # not __name__: run with -m, that is __main__


def warn_if_stale(cfg: ClientConfig, little: KwsModel) -> None:
    """A threshold calibrated for another little model means another trade-off than the file says."""
    if cfg.calibrated_for is not None and cfg.calibrated_for != little.card.sha256:
        log.warning("the threshold was calibrated for another little model (sha256 %.12s, this one %.12s): "
                    "rerun `make calibrate`", cfg.calibrated_for, little.card.sha256)


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    little: Path
    transport: str  # "rest" | "grpc"
    url: str
    grpc_target: str
    encoding: str  # gRPC: a kws_rpc.wire.encodings.ENCODINGS entry; REST: "spec" (16-bit PCM WAV) or "adpcm" (IMA ADPCM WAV)
    threshold: float
    threshold_source: str
    split: str
    limit: int | None
    data_dir: str | None
    report: Path
    device: str
    policy: RetryPolicy
    progress: bool = True
    calibrated_for: str | None = None  # sha256 of the little model the threshold was calibrated for
    max_cost_mb: float | None = None  # hard cap on bytes sent over the run (a data plan); None = no cap
    tls: ClientTls | None = None  # gRPC: TLS on when set; REST: an https:// URL, verified with these
    token: str | None = dataclasses.field(default=None, repr=False)  # bearer token; never written to reports


def make_transport(cfg: ClientConfig) -> Transport:
    if cfg.transport == "rest":
        return RestSpecTransport(cfg.url, cfg.device, cfg.policy, cfg.tls, cfg.token,
                                 wav_codec=REST_ROUTES[f"rest-{cfg.encoding}"])
    return GrpcTransport(cfg.grpc_target, cfg.encoding, cfg.policy, cfg.tls, cfg.token)


def run(cfg: ClientConfig, transport: Transport | None = None) -> tuple[list[ClipRecord], dict[str, Any]]:
    """Runs the cascade over a split; returns per-clip records and the summary."""
    from tqdm import tqdm

    little = KwsModel(cfg.little)
    warn_if_stale(cfg, little)
    root = find_dataset(cfg.data_dir) / DATASET_DIR
    names = split_names(cfg.split)[: cfg.limit]
    own = transport is None
    transport = transport or make_transport(cfg)
    cascade = Cascade(little, cfg.threshold, transport,
                      None if cfg.max_cost_mb is None else int(cfg.max_cost_mb * MB))
    records: list[ClipRecord] = []
    try:
        bar = tqdm(names, desc=f"cascade {cfg.split}", unit="clip", disable=not cfg.progress)
        for position, name in enumerate(bar):
            warned = cascade.over_budget
            d = cascade.classify_file(root / name, request_id(position))
            if cascade.over_budget and not warned:
                log.warning("clip %s: the next request would pass --max-cost-mb %g; keeping little "
                            "answers where that is so", name, cfg.max_cost_mb)
            if d.asked:
                bar.set_postfix(calls=cascade.calls, failures=transport.failures)
            records.append(ClipRecord(name, LABELS[label_of(name)], d.little_label, d.margin, d.asked, d.big_label,
                                      d.label, d.bytes_sent, d.little_ms, d.remote_ms, d.attempts, d.error))
    finally:
        if own:
            transport.close()
    return records, summarize(records)


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--little", default=str(LITTLE), help="edge model (.tflite + card)")
    ap.add_argument("--transport", choices=("rest", "grpc"), default="rest")
    add_remote_args(ap, timeout_s=2.0)
    ap.add_argument("--encoding", "--payload", dest="encoding", choices=ENCODING_CHOICES, default="wav", metavar="ENCODING",
                    help="gRPC: how a clip is put into the request: wav, pcm, or log-mel features computed here, "
                         f"{', '.join(TENSOR_ENCODINGS)} (mfcc-* are the same, by their first names); "
                         "REST always sends the spec body (see --wav). Default %(default)s")
    ap.add_argument("--wav", choices=WAV_CODECS, default="pcm16",
                    help="REST: how the spec body's WAV codes the samples: pcm16 (default, the reference's, which "
                         "any server reads) or ima-adpcm (4 bits a sample: requests 4x smaller, the same "
                         "accuracy; kws servers read it, the course's reference service does not)")
    ap.add_argument("--threshold", type=float, default=None,
                    help=f"ask big when margin <= this (default: {CASCADE_FILE.name}, else {DEFAULT_THRESHOLD})")
    ap.add_argument("--cascade", default=str(CASCADE_FILE), help="calibrated threshold file")
    ap.add_argument("--max-cost-mb", type=float, default=None,
                    help="never send more than this many MB (2^20 bytes) in the run, e.g. a data plan: a "
                         "clip whose request would pass it keeps the little answer (counted as over_budget). "
                         f"Default: with the threshold from {CASCADE_FILE.name}, the budget it was calibrated "
                         "to spend, scaled to the number of clips in the run; 0 = no cap")
    ap.add_argument("--split", default="test", choices=("train", "val", "test"))
    ap.add_argument("--limit", type=int, default=None, help="first N clips of the split only")
    ap.add_argument("--data-dir", default=None, help="folder holding mini_speech_commands/ (else $KWS_DATA_DIR)")
    ap.add_argument("--report", default=None, help="JSON report (default results/edge_<transport>.json)")
    ap.add_argument("--retries", type=int, default=2, help="extra attempts after a retryable failure")
    ap.add_argument("--no-progress", action="store_true")
    modes = ap.add_argument_group("other modes (the same as kws-calibrate; its flags pass through)")
    modes.add_argument("--calibrate", action="store_true",
                       help="choose the threshold on the VAL split (--budget-mb or --target-accuracy; "
                            "--local-big runs big here) and write it to --out (default results/cascade.json; "
                            f"runs read {CASCADE_FILE.name} from models/ unless --cascade names another)")
    modes.add_argument("--sweep", action="store_true",
                       help="accuracy vs cost over thresholds, on test by default: table, JSON and PNG")
    return ap.parse_args(argv)


def route_of(a: argparse.Namespace) -> str:
    """The route to big the flags choose (a key of kws_rpc.wire.encodings.ROUTES)."""
    if a.transport == "rest":
        return next(w for w, codec in REST_ROUTES.items() if codec == a.wav)
    return canonical_route(f"grpc-{a.encoding}")


def config_from_args(a: argparse.Namespace) -> ClientConfig:
    calibrated_for = None
    max_cost_mb = a.max_cost_mb
    if max_cost_mb is not None and max_cost_mb < 0:
        raise SystemExit(f"--max-cost-mb is a budget in MB (0 = no cap); got {max_cost_mb}")
    route = route_of(a)
    if a.threshold is None:
        threshold, source = load_threshold(Path(a.cascade), route)
        if source != "default":
            doc = json.loads(Path(a.cascade).read_text())
            calibrated_for = doc.get("little")
            if max_cost_mb is None:
                max_cost_mb = calibrated_budget(doc, route, len(split_names(a.split)[: a.limit]))
    else:
        threshold, source = a.threshold, "--threshold"
    max_cost_mb = max_cost_mb or None  # 0 = no cap
    client_tls, token = server_credentials(a, "kws-edge")
    if a.transport == "rest" and client_tls is not None and not a.url.lower().startswith("https://"):
        raise SystemExit(f"kws-edge: error: --tls-* flags were given, but --url {a.url} is not https://")
    suffix = {"rest-spec": "rest", "grpc-wav": "grpc"}.get(route, route.replace("-", "_", 1))  # edge_grpc_logmel-q5z
    report = Path(a.report) if a.report else RESULTS / f"edge_{suffix}.json"
    return ClientConfig(little=Path(a.little), transport=a.transport, url=a.url, grpc_target=a.grpc,
                        encoding=route.split("-", 1)[1], threshold=threshold,
                        threshold_source=source, split=a.split, limit=a.limit, data_dir=a.data_dir,
                        report=report, device=a.device,
                        policy=RetryPolicy(timeout_s=a.timeout, retries=a.retries), progress=not a.no_progress,
                        calibrated_for=calibrated_for, max_cost_mb=max_cost_mb, tls=client_tls, token=token)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--calibrate" in argv or "--sweep" in argv:
        from edge.lab import calibrate

        return calibrate.main([a for a in argv if a != "--calibrate"])
    cfg = config_from_args(parse_args(argv, prog))
    records, summary = run(cfg)
    run_info = {k: repo_relative(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}
    if cfg.tls is not None:
        run_info["tls"] = {k: repo_relative(v) for k, v in dataclasses.asdict(cfg.tls).items() if v}
    run_info["token"] = "set" if cfg.token else None  # the secret itself stays out of the report
    write_report(cfg.report, records, summary, run_info)
    print(headline(summary))
    cap = "no cap" if cfg.max_cost_mb is None else f"cap {cfg.max_cost_mb:.3f} MB"
    print(f"(threshold {cfg.threshold:g} from {cfg.threshold_source}, {cap}; {summary['calls']} calls, "
          f"{summary['failures']} failed, {summary['over_budget']} over budget; little {summary['mean_little_ms']:.1f} ms/clip; report {cfg.report})")
    if summary["failures"]:
        # Every clip has an answer, but not the one the run was asked for: say so, and exit non-zero.
        server = cfg.url if cfg.transport == "rest" else cfg.grpc_target
        log.error("%d of %d asks to %s failed (errors per clip in %s); those clips kept little's answer. "
                  "Is the server running (`make server`) and reachable?", summary["failures"], summary["calls"],
                  server, cfg.report)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
