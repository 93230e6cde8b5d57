"""`kws-coop`: cooperative keyword spotting over a data set split; every live worker votes on every clip, an
ensemble policy decides. The MQTT participant is ``kws_rpc.mqtt.coop.CoopClient``; this module chooses the
policy, runs the split and writes the report.

    kws-coop --broker mqtt://host:1883 --workers 3   # workers already running (kws-worker)
    make coop                                        # all-in-one demo: embedded broker + members (kws_rpc.lab.coop_demo)

The run exits 0 only if every clip was decided with a vote from every worker that stayed alive; otherwise
it names the clips it could not decide and exits 1. The ensemble policy is chosen before the run
(``--policy auto``) and reported on the requested split.

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
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kws_rpc.lab import ensemble_fit
from kws_rpc.lab.coop_report import clip_members, clip_votes, report
from kws_rpc.lab.data import find_dataset, load_split
from kws_rpc.model import ensemble
from kws_rpc.model.native import responsive_network_thread, tune_process
from kws_rpc.mqtt.coop import ENCODINGS, WINDOW_PER_INFLIGHT, CoopClient, CoopConfig, Run
from kws_rpc.mqtt.options import add_broker_arguments, broker_settings

log = logging.getLogger("kws_rpc.lab.coop")  # not __name__: run with -m, that is __main__
MODELS = Path(__file__).resolve().parents[2] / "models"
MEMBERS = ("big", "member_cnn", "member_dscnn")  # used when models/ensemble.json is absent


def default_members() -> list[str]:
    """The shipped ensemble as models/ensemble.json lists it (all members take one feature config)."""
    manifest = MODELS / "ensemble.json"
    names = json.loads(manifest.read_text())["members"] if manifest.is_file() else MEMBERS
    return [str(MODELS / f"{m}.tflite") for m in names]


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
    p.add_argument("--encoding", "--payload", dest="encoding", default="auto", choices=ENCODINGS,
                   help="how clips are sent: features (FLOAT16 log-mel, computed once here; needs workers that "
                        "share one feature config), audio (PCM), or auto (features when they do; default)")
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
    tune_process()
    responsive_network_thread()
    url = args.broker
    try:
        settings = broker_settings(url, args, max_inflight=args.max_inflight)
    except (ValueError, OSError) as e:
        p.error(str(e))
    config = CoopConfig(settings, args.deployment, args.client_id, args.timeout,
                        min_workers=args.workers, encoding=args.encoding,
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
            p.error(f"--policy weighted: {args.weights} holds no fitted weights (kws-compare "
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
            policy, scores = ensemble_fit.choose_policy(votes, val_y, members=members)
            result["policy_choice"] = {"split": "val", "scores": scores, "chosen": policy,
                                       "weighted_scored_by": "5-fold out-of-fold accuracy on val",
                                       "end_to_end_s": val["end_to_end_s"]}
            live = {m for ms in members for m in ms}
            if policy == "weighted" and (weights is None or not live <= set(weights.weights)):
                probs, mask, names_ = ensemble_fit.dense(votes, members)
                weights = ensemble_fit.fit_weights(probs, val_y, names_, ensemble_fit.cross_fit(
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
