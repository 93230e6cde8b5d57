"""`make bench-stream`: the Pi listening to long streams built from the data set, deterministic by seed.

As TensorFlow's Speech Commands streaming test does, the split's keyword clips are placed one after the
other with random gaps (here 0.5-2.5 s) in one long stream, and background noise runs under all of it, at
20, 10 and 0 dB SNR against the loudest 300 ms of the split's median clip (kws_rpc.lab.noise). Beside them,
hours of audio with no keyword in it: the split's portion of the background recordings and synthetic
noise, with the split's synthetic non-keyword words every 2-8 s, at 10 dB (kws_rpc.lab.streams builds them,
for the streaming training windows too). Nothing is downloaded; the synthetic words come from `kws-train`'s
synthesis cache (trainers.synth).

The little listens as `kws-edge listen` does (edge.stream: a 1 s window every hop; its probabilities are
computed once per stream, batched, then every detector setting of the sweep runs over them). A detection
matches a keyword when it fires between the start of the keyword's 1 s clip and 1 s after its end;
latency is the event time minus the clip's end. Every other detection is a false accept. little + big:
detections below the detector's ``sure`` go to big (run here on the same window the server would get),
which confirms, relabels or rejects them (a keyword it names below the detector's ``confirm`` is rejected);
bytes are those of the gRPC request the edge sends.

Settings are chosen on streams built from val (little alone: the most hits at 10 dB with at most
--max-fa false accepts per hour; little + big: the same at --max-fa-verified and at most --max-bytes per
hour), and reported on streams built from test. Writes results/bench_stream.json and a curve of misses
against false accepts per hour (results/bench_stream.png). ``--little`` repeated compares several littles
on the very same streams; ``--no-big`` leaves out the little + big rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bench.common import RESULTS, format_table, shown, write_results
from edge.listen import Shipped
from edge.stream import Detector, DetectorConfig, FrameStream, Listener, hop_probabilities
from kws_rpc.wire.encodings import build_request
from kws_rpc.lab.data import find_dataset
from kws_rpc.lab.stats import mcnemar
from kws_rpc.lab.streams import CHUNK_S, RATE, Stream, keyword_free, keyword_stream, material
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.model.shipped import models_dir

SNRS = (20.0, 10.0, 0.0)
MATCH_AFTER_S = 1.0  # a detection up to this long after a clip's end still belongs to it


@dataclasses.dataclass
class Heard:
    """A stream's per-hop probabilities, and big's verdicts on the windows asked about, cached."""

    stream: Stream
    probs: np.ndarray
    times: np.ndarray
    big: dict[int, tuple[str, float, int]] = dataclasses.field(default_factory=dict)  # hop -> (label, its
    # probability, request bytes)
    runs: dict[tuple, list] = dataclasses.field(default_factory=dict)  # (setting, verified) -> its detections


def hear(little: KwsModel, stream: Stream, hop_frames: int, frames: np.ndarray | None = None) -> Heard:
    """``frames``: the stream's frames for little's feature config, if already computed."""
    if frames is None:
        frames = FrameStream(little.feature_config).push(stream.audio)
    probs, times = hop_probabilities(little, frames, hop_frames)
    return Heard(stream, probs, times)


def hear_all(littles: list[KwsModel], stream: Stream, hop_frames: list[int]) -> list[Heard]:
    """Each little's hearing of one stream; littles with the same features share its frames."""
    frames: dict = {}
    for m in littles:
        if m.feature_config not in frames:
            frames[m.feature_config] = FrameStream(m.feature_config).push(stream.audio)
    return [hear(m, stream, hop, frames[m.feature_config]) for m, hop in zip(littles, hop_frames)]


def verdict(big: KwsModel, heard: Heard, hop: int, encoding: str) -> tuple[str, float, int]:
    if hop not in heard.big:
        end = int(round(heard.times[hop] * RATE))
        window = heard.stream.audio[max(0, end - RATE) : end]
        window = np.concatenate([np.zeros(RATE - len(window), np.float32), window])
        request = build_request(window, encoding, f"listen-{hop}", big.feature_config)
        probs = big.predict_audio(window)[0]
        top = int(np.argmax(probs))
        heard.big[hop] = (big.labels[top], float(probs[top]), request.ByteSize())
    return heard.big[hop]


def verified_run(heard: Heard, labels: list[str], cfg: DetectorConfig, big: KwsModel | None,
                 encoding: str) -> list[tuple[float, str, float | None, int]]:
    """Every detection of one stream under cfg (its confirm aside), as (t, label, big's probability or None
    when big was not asked, request bytes); cached on the stream, so that settings differing only in confirm
    run the detector once."""
    key = (dataclasses.replace(cfg, confirm=0.0), big is not None)
    if key in heard.runs:
        return heard.runs[key]
    det, out = Detector(labels, key[0]), []
    for k in range(len(heard.probs)):
        hit = det.update(heard.probs[k], float(heard.times[k]))
        if hit is None:
            continue
        label, score = hit
        if big is not None and score < cfg.sure:
            # as the Listener settles: the window where the little's score of the label peaks, settle hops on
            i, last = labels.index(label), min(k + cfg.settle, len(heard.probs) - 1)
            peak = k + int(np.argmax(heard.probs[k : last + 1, i]))
            label, p, size = verdict(big, heard, peak, encoding)
            out.append((float(heard.times[last]), label, p, size))
        else:
            out.append((float(heard.times[k]), label, None, 0))
    heard.runs[key] = out
    return out


def detections(heard: Heard, labels: list[str], cfg: DetectorConfig, big: KwsModel | None,
               encoding: str) -> tuple[list[tuple[float, str]], int, int]:
    """Events (t, label) of one stream under cfg, with big verifying those below cfg.sure if given (a
    keyword it names below cfg.confirm is rejected, as kws-edge listen does); and the asks and bytes sent."""
    out, asks, sent = [], 0, 0
    for t, label, p, size in verified_run(heard, labels, cfg, big, encoding):
        if p is not None:
            asks, sent = asks + 1, sent + size
            if not cfg.confirms(label, p):
                continue
        out.append((t, label))
    return out, asks, sent


def score(events: list[tuple[float, str]], keywords: list[tuple[float, float, str]]) -> dict[str, Any]:
    """Hits (right label), wrong labels, false accepts and latencies of one stream's events; "hit_of": for
    each event, the index of the keyword it hit, or -1."""
    starts = np.array([k[0] for k in keywords]) if keywords else np.zeros(0)
    taken: set[int] = set()
    hits = wrong = false = 0
    latency, hit, hit_of = [], np.zeros(len(keywords), bool), []
    for t, label in events:
        i = int(np.searchsorted(starts, t, side="right")) - 1
        hit_of.append(-1)
        if i >= 0 and i not in taken and t <= keywords[i][1] + MATCH_AFTER_S:
            taken.add(i)
            if label == keywords[i][2]:
                hits += 1
                hit[i], hit_of[-1] = True, i
                latency.append(t - keywords[i][1])
            else:
                wrong += 1
        else:
            false += 1
    return {"hits": hits, "wrong": wrong, "false": false, "latency": latency, "hit": hit, "hit_of": hit_of}


def evaluate(heard: dict[str, list[Heard]], labels: list[str], cfg: DetectorConfig, big: KwsModel | None,
             encoding: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for snr in SNRS:
        (h,) = heard[f"{snr:g}"]
        events, _, _ = detections(h, labels, cfg, big, encoding)
        s = score(events, h.stream.keywords)
        n = len(h.stream.keywords)
        lat = np.array(s["latency"]) if s["latency"] else np.array([np.nan])
        row[f"{snr:g}dB"] = {"keywords": n, "hit_pct": 100 * s["hits"] / n, "wrong_pct": 100 * s["wrong"] / n,
                             "false_in_keyword_stream": s["false"], "latency_p50_s": float(np.nanpercentile(lat, 50)),
                             "latency_p95_s": float(np.nanpercentile(lat, 95)), "_hit": s["hit"]}
    free_events = free_asks = free_bytes = 0
    for h in heard["free"]:
        events, asks, sent = detections(h, labels, cfg, big, encoding)
        free_events, free_asks, free_bytes = free_events + len(events), free_asks + asks, free_bytes + sent
    hours = sum(len(h.stream.audio) for h in heard["free"]) / RATE / 3600
    kw_hours = sum(len(heard[f"{s:g}"][0].stream.audio) for s in SNRS) / RATE / 3600
    kw_bytes = sum(detections(heard[f"{s:g}"][0], labels, cfg, big, encoding)[2] for s in SNRS) if big else 0
    row["keyword_free"] = {"hours": hours, "false_accepts": free_events, "fa_per_hour": free_events / hours,
                           "asks": free_asks}
    row["bytes_per_hour"] = (free_bytes + kw_bytes) / (hours + kw_hours)
    return row


_SWEPT: dict[str, Any] = {}  # what sweep()'s workers evaluate: inherited through fork, never pickled


def _evaluate_swept(cfg: DetectorConfig) -> dict[str, Any]:
    s = _SWEPT
    return evaluate(s["heard"], s["labels"], cfg, s["big"], s["encoding"])


def sweep(heard: dict[str, list[Heard]], labels: list[str], configs: list[DetectorConfig], big: KwsModel | None,
          encoding: str, desc: str, jobs: int, chunk: int = 4) -> list[tuple[DetectorConfig, dict[str, Any]]]:
    """evaluate() of every setting, in order, over ``jobs`` forked processes (the streams, hours of audio,
    are inherited, not copied; each process keeps its own cache of big's verdicts and of detector runs, so
    settings differing only in confirm should come in runs of ``chunk``)."""
    _SWEPT.update(heard=heard, labels=labels, big=big, encoding=encoding)
    rows: list[dict[str, Any]] = []
    try:
        if jobs < 2 or "fork" not in multiprocessing.get_all_start_methods():
            for c in tqdm(configs, desc=desc, file=sys.stderr):
                rows.append(_evaluate_swept(c))
        else:
            with multiprocessing.get_context("fork").Pool(jobs) as pool:
                for row in tqdm(pool.imap(_evaluate_swept, configs, chunksize=chunk), total=len(configs), desc=desc,
                                file=sys.stderr):
                    rows.append(row)
    finally:
        _SWEPT.clear()
    return list(zip(configs, rows))


def build(split: str, root: Path, hours: float, seed: int) -> dict[str, Any]:
    return {**material(split, root, seed), "hours": hours}


def hear_split(littles: list[KwsModel], split: str, root: Path, hours: float, seed: int,
               hop_frames: list[int]) -> list[dict[str, list[Heard]]]:
    """Each little's hearing of the split's streams (built once: every little hears the very same audio)."""
    b = build(split, root, hours, seed)
    out: list[dict[str, list[Heard]]] = [{"free": []} for _ in littles]
    for snr in tqdm(SNRS, desc=f"{split}: keyword streams", file=sys.stderr):
        stream = keyword_stream(b["audio"], b["labels"], b["recordings"], b["ref"], snr, b["rng"])
        for heard, h in zip(out, hear_all(littles, stream, hop_frames)):
            heard[f"{snr:g}"] = [h]
    chunks = int(np.ceil(hours * 3600 / CHUNK_S))
    for stream in tqdm(keyword_free(hours, b["others"], b["recordings"], b["ref"], b["rng"]), total=chunks,
                       desc=f"{split}: keyword-free audio", unit="10 min", file=sys.stderr):
        for heard, h in zip(out, hear_all(littles, stream, hop_frames)):
            heard["free"].append(h)
    return out


CONFIRMS = (0.0, 0.5, 0.7, 0.8, 0.9)  # big's probability a verified keyword must reach


def grid(thresholds: np.ndarray, sures: tuple[float, ...], settles: tuple[int, ...] = (0,),
         confirms: tuple[float, ...] = (0.0,)) -> list[DetectorConfig]:
    """Every setting; those differing only in confirm are consecutive."""
    return [DetectorConfig(threshold=float(t), smooth=s, patience=p, sure=float(u), settle=w, confirm=c)
            for t, s, p, u, w, c in itertools.product(thresholds, (1, 3), (1, 2), sures, settles, confirms)
            if u >= t or u > 1]


def choose(rows: list[tuple[DetectorConfig, dict]], max_fa: float, max_bytes: float | None) -> tuple[DetectorConfig, dict]:
    ok = [(c, r) for c, r in rows if r["keyword_free"]["fa_per_hour"] <= max_fa
          and (max_bytes is None or r["bytes_per_hour"] <= max_bytes)]
    if not ok:
        raise SystemExit(f"no detector setting meets {max_fa} false accepts per hour on val")
    return max(ok, key=lambda cr: (cr[1]["10dB"]["hit_pct"], cr[1]["20dB"]["hit_pct"], -cr[1]["keyword_free"]["fa_per_hour"]))


def val_summary(row: dict) -> dict[str, float]:
    """What val said of a chosen setting: its hits at each SNR, false accepts and bytes an hour."""
    return {**{f"hit_pct_{k}": row[k]["hit_pct"] for k in ("20dB", "10dB", "0dB")},
            "fa_per_hour": row["keyword_free"]["fa_per_hour"], "bytes_per_hour": row["bytes_per_hour"]}


def write_detector(path: Path, chosen: dict[str, dict[str, DetectorConfig]], verifier: str | None) -> None:
    """Adds each little's chosen settings to a detector file (other models' entries stay) and names the little
    with the most val hits as `kws-edge listen`'s default ("listener"); ``chosen``: by model name, in order of
    val hits, best first."""
    import json

    doc = json.loads(path.read_text()) if path.is_file() else {}
    for model, ch in chosen.items():
        doc.setdefault("models", {})[model] = dataclasses.asdict(ch["little"])
        if "little + big" in ch:
            doc.setdefault("verified", {})[model] = dataclasses.asdict(ch["little + big"])
            doc["verifier"] = verifier  # the server model the verified settings were chosen with
    doc["listener"] = next(iter(chosen))
    doc["chosen_by"] = "make bench-stream (val streams): the most hits at 10 dB within the false-accept and byte budgets"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def real_time_factor(little: KwsModel, stream: Stream, cfg: DetectorConfig, seconds: float = 300.0) -> float:
    """CPU seconds per second of audio of features + little, as `kws-edge listen` runs them (one hop at a time)."""
    lis, x = Listener(little, cfg), stream.audio[: int(seconds * RATE)]
    hop = cfg.hop_ms * RATE // 1000
    start = time.process_time()
    for i in range(0, len(x), hop):
        lis.push(x[i : i + hop])
    return (time.process_time() - start) / (len(x) / RATE)


def plot(path: Path, curves: dict[str, list[tuple[float, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():  # in threshold order: the curve a detector setting moves along
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=name)
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("false accepts per hour (keyword-free test audio)")
    ax.set_ylabel("missed keywords at 10 dB SNR (%)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = models_dir()
    shipped = Shipped.read(models)
    default_little = shipped.little()  # what kws-edge listen uses: the models/listen.json's choice
    default_big = models / f"{shipped.verifier()}.tflite"
    ap.add_argument("--little", type=Path, action="append", default=None,
                    help=f"the listening model (default {default_little}); repeat it to compare several on the "
                         "same streams (the results then go under \"models\", by model name)")
    ap.add_argument("--big", type=Path, default=default_big, help="the verifier (default %(default)s)")
    ap.add_argument("--no-big", action="store_true", help="the little alone: no little + big rows (faster)")
    ap.add_argument("--encoding", default="logmel-q5z", help="how the edge sends a window to big (default %(default)s)")
    ap.add_argument("--hours", type=float, default=6.0, help="keyword-free test audio (default %(default)s h)")
    ap.add_argument("--val-hours", type=float, default=6.0,
                    help="keyword-free val audio (default %(default)s h: at 2 h, 0.5 false accepts an hour is one "
                         "event, and the setting chosen is the one that was lucky on val)")
    ap.add_argument("--max-fa", type=float, default=2.0, help="little alone: false accepts per hour on val (default %(default)s)")
    ap.add_argument("--max-fa-verified", type=float, default=0.5, help="little + big: the same (default %(default)s)")
    ap.add_argument("--max-bytes", type=float, default=1e6, help="little + big: bytes per hour on val (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="processes the sweeps of detector settings (val's choice, test's curves) run on (default: the "
                         "cores, %(default)s)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_stream.json")
    ap.add_argument("--write-detector", type=Path, default=None, metavar="JSON",
                    help="install the settings chosen on val for each little, under its name (models/listen.json "
                         "is what kws-edge listen reads by default; other models' entries stay)")
    a = ap.parse_args(argv)
    paths = a.little or [default_little]
    root = find_dataset(a.data_dir)
    littles = [KwsModel(p) for p in paths]
    big = None if a.no_big else KwsModel(a.big)
    base = DetectorConfig()
    hop_frames = [base.hop_ms * RATE // 1000 // m.feature_config.frame_step for m in littles]
    thresholds = np.round(np.arange(0.30, 0.96, 0.05), 2)
    alone_grid = grid(thresholds, (1.01,))
    verified_grid = grid(thresholds, (0.8, 0.9, 1.01), settles=(0, 3), confirms=CONFIRMS)
    single = len(littles) == 1
    per_model: list[dict[str, Any]] = [{"path": shown(p)} for p in paths]
    chosen: list[dict[str, DetectorConfig]] = [{} for _ in littles]
    curves: dict[str, list[tuple[float, float]]] = {}
    val_hits: dict[str, tuple[float, float]] = {}  # each little's hits at 10 and 20 dB at its chosen val setting
    for split, hours in (("val", a.val_hours), ("test", a.hours)):
        if split == "test" and a.write_detector is not None:
            by_name = dict(zip((m.name for m in littles), chosen))
            write_detector(a.write_detector, {n: by_name[n] for n in sorted(val_hits, key=val_hits.__getitem__,
                                                                              reverse=True)},
                           big.name if big is not None else None)
        heard_all = hear_split(littles, split, root, hours, a.seed, hop_frames)
        for little, heard, ch, res in zip(littles, heard_all, chosen, per_model):
            if split == "val":
                alone = sweep(heard, little.labels, alone_grid, None, a.encoding, f"val: {little.name}", a.jobs)
                ch["little"], val_row = choose(alone, a.max_fa, None)
                res["val"] = {"little": val_summary(val_row)}
                if big is not None:
                    verified = sweep(heard, little.labels, verified_grid, big, a.encoding, f"val: {little.name} + big",
                                     a.jobs, chunk=len(CONFIRMS))
                    ch["little + big"], val_row = choose(verified, a.max_fa_verified, a.max_bytes)
                    res["val"]["little + big"] = val_summary(val_row)
                val_hits[little.name] = (val_row["10dB"]["hit_pct"], val_row["20dB"]["hit_pct"])
                continue
            for name, cfg in ch.items():
                row = evaluate(heard, little.labels, cfg, big if "big" in name else None, a.encoding)
                row["detector"] = dataclasses.asdict(cfg)
                res[name] = row
            res["cpu_per_audio_second"] = real_time_factor(little, heard["10"][0].stream, ch["little"])
            mine = {}
            for name, c0 in ch.items():
                along = [dataclasses.replace(c0, threshold=float(t), sure=max(c0.sure, float(t)) if c0.sure <= 1 else c0.sure)
                         for t in thresholds]
                pts = [(r["keyword_free"]["fa_per_hour"], 100 - r["10dB"]["hit_pct"])
                       for _, r in sweep(heard, little.labels, along, big if "big" in name else None, a.encoding,
                                         f"test: {name} curve", a.jobs)]
                mine[name] = pts
                curves[name if single else name.replace("little", little.name, 1)] = pts
            res["curves"] = {k: [{"fa_per_hour": x, "miss_pct": y} for x, y in v] for k, v in mine.items()}
        if split == "test":
            plot(a.out.with_suffix(".png"), curves)
    head = {"big": shown(a.big) if big is not None else None, "encoding": a.encoding, "seed": a.seed,
            "hours": {"val": a.val_hours, "test": a.hours}}
    hits = {m.name: {s: per_model[i]["little"][f"{s:g}dB"]["_hit"] for s in SNRS} for i, m in enumerate(littles)}
    for res in per_model:  # per-keyword hits: for the paired tests below, not for the file
        for name in chosen[0]:
            for s in SNRS:
                res.get(name, {}).get(f"{s:g}dB", {}).pop("_hit", None)
    if not single:  # the same keywords in the same streams: an exact McNemar test on hits, first little vs each
        first = littles[0].name
        head["mcnemar_hits"] = {f"{m.name} vs {first}": {f"{s:g}dB": mcnemar(hits[m.name][s], hits[first][s]).as_dict()
                                                          for s in SNRS} for m in littles[1:]}
    results: dict[str, Any] = {**head, **per_model[0]} if single else {**head, "models": {
        m.name: res for m, res in zip(littles, per_model)}}
    rows = [{"system": n if single else n.replace("little", m.name, 1),
             **{f"hit {s:g}dB": res[n][f"{s:g}dB"]["hit_pct"] for s in SNRS},
             "wrong 10dB": res[n]["10dB"]["wrong_pct"], "FA/h": res[n]["keyword_free"]["fa_per_hour"],
             "p95 latency s": res[n]["10dB"]["latency_p95_s"], "bytes/h": res[n]["bytes_per_hour"],
             "val: hit 10dB": res["val"][n]["hit_pct_10dB"], "val: FA/h": res["val"][n]["fa_per_hour"]}
            for m, res, ch in zip(littles, per_model, chosen) for n in ch]
    print(format_table(rows, list(rows[0])))
    for pair, per in head.get("mcnemar_hits", {}).items():
        print(f"McNemar on hits, {pair}: " + ", ".join(f"{k} b={v['b']} c={v['c']} p={v['p']:.3g}" for k, v in per.items()))
    for m, res in zip(littles, per_model):
        print(f"features + {m.name}: {1000 * res['cpu_per_audio_second']:.2f} ms of CPU per second of audio")
    write_results(a.out, results)
    print(f"wrote {a.out} and {a.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
