"""`make bench-stream`: the Pi listening to long streams built from the data set, deterministic by seed.

As TensorFlow's Speech Commands streaming test does, the split's keyword clips are placed one after the
other with random gaps (here 0.5-2.5 s) in one long stream, and background noise runs under all of it, at
20, 10 and 0 dB SNR against the loudest 300 ms of the split's median clip (kws_rpc.lab.noise). Beside them,
hours of audio with no keyword in it: the split's portion of the background recordings and synthetic
noise, with the split's synthetic non-keyword words every 2-8 s, at 10 dB. Nothing is downloaded; the synthetic words come from `kws-train`'s
synthesis cache (trainers.synth).

The little listens as `kws-edge listen` does (edge.stream: a 1 s window every hop; its probabilities are
computed once per stream, batched, then every detector setting of the sweep runs over them). A detection
matches a keyword when it fires between the start of the keyword's 1 s clip and 1 s after its end;
latency is the event time minus the clip's end. Every other detection is a false accept. little + big:
detections below the detector's ``sure`` go to big (run here on the same window the server would get),
which confirms, relabels or rejects them; bytes are those of the gRPC request the edge sends.

Settings are chosen on streams built from val (little alone: the most hits at 10 dB with at most
--max-fa false accepts per hour; little + big: the same at --max-fa-verified and at most --max-bytes per
hour), and reported on streams built from test. Writes results/bench_stream.json and a curve of misses
against false accepts per hour (results/bench_stream.png).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bench.common import RESULTS, format_table, write_results
from edge.stream import Detector, DetectorConfig, FrameStream, Listener, hop_probabilities, is_keyword
from kws_rpc.wire.encodings import build_request
from kws_rpc.lab.data import LABELS, find_dataset, load_noise, load_split
from kws_rpc.lab.listen_data import load_synth, reversed_clips
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.lab.noise import NOISE_KINDS, coloured, peak_window_power, portions
from kws_rpc.model.shipped import models_dir

RATE = 16000
SNRS = (20.0, 10.0, 0.0)
MATCH_AFTER_S = 1.0  # a detection up to this long after a clip's end still belongs to it
CHUNK_S = 600.0  # keyword-free audio is made and heard ten minutes at a time


@dataclasses.dataclass(frozen=True)
class Stream:
    name: str
    audio: np.ndarray
    keywords: list[tuple[float, float, str]]  # (clip start s, clip end s, label)


def noise_bed(n: int, recordings: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """n samples of noise at unit mean power: stretches of 1-5 s of the recordings and of synthetic noise."""
    parts, got = [], 0
    while got < n:
        k = int(rng.integers(RATE, 5 * RATE))
        if rng.random() < 0.8:
            rec = recordings[int(rng.integers(len(recordings)))]
            start = int(rng.integers(0, max(1, len(rec) - k)))
            x = np.resize(rec[start : start + k], k).astype(np.float64)
        else:
            x = coloured(NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))], k, rng).astype(np.float64)
        parts.append(x / (np.sqrt(np.mean(x**2)) + 1e-12))
        got += k
    return np.concatenate(parts)[:n].astype(np.float32)


def noise_gain(reference_power: float, snr: float) -> float:
    """The gain on a unit-power noise bed that puts it snr dB below the reference (the median clip's loudest 300 ms)."""
    return float(np.sqrt(reference_power / 10 ** (snr / 10)))


def keyword_stream(audio: np.ndarray, labels: np.ndarray, recordings: list[np.ndarray], ref: float, snr: float,
                   rng: np.random.Generator) -> Stream:
    order = rng.permutation(len(audio))
    gaps = (rng.uniform(0.5, 2.5, len(audio)) * RATE).astype(int)
    total = int(gaps.sum()) + len(audio) * audio.shape[1] + RATE
    x = np.zeros(total, np.float32)
    keywords, pos = [], 0
    for i, gap in zip(order, gaps):
        pos += gap
        x[pos : pos + audio.shape[1]] += audio[i]
        keywords.append((pos / RATE, (pos + audio.shape[1]) / RATE, LABELS[labels[i]]))
        pos += audio.shape[1]
    x += noise_gain(ref, snr) * noise_bed(total, recordings, rng)
    return Stream(f"keywords @ {snr:g} dB", np.clip(x, -1, 1), keywords)


def keyword_free(hours: float, others: np.ndarray, recordings: list[np.ndarray], ref: float,
                 rng: np.random.Generator, snr: float = 10.0) -> Iterator[Stream]:
    """Ten-minute streams of noise with non-keyword speech every 2-8 s, `hours` of them in all."""
    for c in range(int(np.ceil(hours * 3600 / CHUNK_S))):
        n = int(min(CHUNK_S, hours * 3600 - c * CHUNK_S) * RATE)
        x = noise_gain(ref, snr) * noise_bed(n, recordings, rng)
        pos = int(rng.uniform(2, 8) * RATE)
        while pos + others.shape[1] < n:
            x[pos : pos + others.shape[1]] += others[int(rng.integers(len(others)))]
            pos += others.shape[1] + int(rng.uniform(2, 8) * RATE)
        yield Stream(f"keyword-free {c}", np.clip(x, -1, 1), [])


@dataclasses.dataclass
class Heard:
    """A stream's per-hop probabilities, and big's verdicts on the windows asked about, cached."""

    stream: Stream
    probs: np.ndarray
    times: np.ndarray
    big: dict[int, tuple[str, int]] = dataclasses.field(default_factory=dict)  # hop -> (label, request bytes)


def hear(little: KwsModel, stream: Stream, hop_frames: int) -> Heard:
    frames = FrameStream(little.feature_config).push(stream.audio)
    probs, times = hop_probabilities(little, frames, hop_frames)
    return Heard(stream, probs, times)


def verdict(big: KwsModel, heard: Heard, hop: int, encoding: str) -> tuple[str, int]:
    if hop not in heard.big:
        end = int(round(heard.times[hop] * RATE))
        window = heard.stream.audio[max(0, end - RATE) : end]
        window = np.concatenate([np.zeros(RATE - len(window), np.float32), window])
        request = build_request(window, encoding, f"listen-{hop}", big.feature_config)
        label = big.labels[int(np.argmax(big.predict_audio(window)[0]))]
        heard.big[hop] = (label, request.ByteSize())
    return heard.big[hop]


def detections(heard: Heard, labels: list[str], cfg: DetectorConfig, big: KwsModel | None,
               encoding: str) -> tuple[list[tuple[float, str]], int, int]:
    """Events (t, label) of one stream under cfg, with big verifying those below cfg.sure if given;
    and the asks and bytes sent."""
    det, out, asks, sent = Detector(labels, cfg), [], 0, 0
    for k in range(len(heard.probs)):
        hit = det.update(heard.probs[k], float(heard.times[k]))
        if hit is None:
            continue
        label, score = hit
        if big is not None and score < cfg.sure:
            label, size = verdict(big, heard, k, encoding)
            asks, sent = asks + 1, sent + size
            if not is_keyword(label):
                continue
        out.append((float(heard.times[k]), label))
    return out, asks, sent


def score(events: list[tuple[float, str]], keywords: list[tuple[float, float, str]]) -> dict[str, Any]:
    """Hits (right label), wrong labels, false accepts and latencies of one stream's events."""
    starts = np.array([k[0] for k in keywords]) if keywords else np.zeros(0)
    taken: set[int] = set()
    hits = wrong = false = 0
    latency = []
    for t, label in events:
        i = int(np.searchsorted(starts, t, side="right")) - 1
        if i >= 0 and i not in taken and t <= keywords[i][1] + MATCH_AFTER_S:
            taken.add(i)
            if label == keywords[i][2]:
                hits += 1
                latency.append(t - keywords[i][1])
            else:
                wrong += 1
        else:
            false += 1
    return {"hits": hits, "wrong": wrong, "false": false, "latency": latency}


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
                             "latency_p95_s": float(np.nanpercentile(lat, 95))}
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


def build(split: str, root: Path, hours: float, seed: int) -> dict[str, Any]:
    audio, labels, _ = load_split(split, root)
    recordings = portions(load_noise(root), split)
    ref = float(np.median(peak_window_power(audio)))
    rng = np.random.default_rng([seed, ["train", "val", "test"].index(split)])
    # the keyword-free audio's speech: the split's synthetic non-keyword words (trainers.synth). Without that
    # cache, time-reversed keyword clips stand in (spliced halves are not used: they hold real keyword halves)
    synth, _ = load_synth(root, split, keywords=False)
    others = synth if len(synth) else reversed_clips(audio, len(audio) // 2, rng)
    return {"audio": audio, "labels": labels, "recordings": recordings, "ref": ref, "rng": rng, "others": others,
            "hours": hours}


def hear_split(little: KwsModel, split: str, root: Path, hours: float, seed: int, hop_frames: int) -> dict[str, list[Heard]]:
    b = build(split, root, hours, seed)
    out: dict[str, list[Heard]] = {}
    for snr in tqdm(SNRS, desc=f"{split}: keyword streams", file=sys.stderr):
        out[f"{snr:g}"] = [hear(little, keyword_stream(b["audio"], b["labels"], b["recordings"], b["ref"], snr, b["rng"]),
                                hop_frames)]
    chunks = int(np.ceil(hours * 3600 / CHUNK_S))
    out["free"] = [hear(little, s, hop_frames) for s in tqdm(
        keyword_free(hours, b["others"], b["recordings"], b["ref"], b["rng"]), total=chunks,
        desc=f"{split}: keyword-free audio", unit="10 min", file=sys.stderr)]
    return out


def grid(thresholds: np.ndarray, sures: tuple[float, ...]) -> list[DetectorConfig]:
    return [DetectorConfig(threshold=float(t), smooth=s, patience=p, sure=float(u))
            for t, s, p, u in itertools.product(thresholds, (1, 3), (1, 2), sures) if u >= t or u > 1]


def choose(rows: list[tuple[DetectorConfig, dict]], max_fa: float, max_bytes: float | None) -> tuple[DetectorConfig, dict]:
    ok = [(c, r) for c, r in rows if r["keyword_free"]["fa_per_hour"] <= max_fa
          and (max_bytes is None or r["bytes_per_hour"] <= max_bytes)]
    if not ok:
        raise SystemExit(f"no detector setting meets {max_fa} false accepts per hour on val")
    return max(ok, key=lambda cr: (cr[1]["10dB"]["hit_pct"], cr[1]["20dB"]["hit_pct"], -cr[1]["keyword_free"]["fa_per_hour"]))


def write_detector(path: Path, model: str, chosen: dict[str, DetectorConfig]) -> None:
    """Adds the model's chosen settings to a detector file (other models' entries stay)."""
    import json

    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc.setdefault("models", {})[model] = dataclasses.asdict(chosen["little"])
    doc.setdefault("verified", {})[model] = dataclasses.asdict(chosen["little + big"])
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
    default_little = models / "little_listen.tflite" if (models / "little_listen.tflite").is_file() else models / "little.tflite"
    default_big = models / "big_listen_int8.tflite" if (models / "big_listen_int8.tflite").is_file() else models / "big_int8.tflite"
    ap.add_argument("--little", type=Path, default=default_little, help="the listening model (default %(default)s)")
    ap.add_argument("--big", type=Path, default=default_big, help="the verifier (default %(default)s)")
    ap.add_argument("--encoding", default="logmel-q5z", help="how the edge sends a window to big (default %(default)s)")
    ap.add_argument("--hours", type=float, default=6.0, help="keyword-free test audio (default %(default)s h)")
    ap.add_argument("--val-hours", type=float, default=2.0, help="keyword-free val audio (default %(default)s h)")
    ap.add_argument("--max-fa", type=float, default=2.0, help="little alone: false accepts per hour on val (default %(default)s)")
    ap.add_argument("--max-fa-verified", type=float, default=0.5, help="little + big: the same (default %(default)s)")
    ap.add_argument("--max-bytes", type=float, default=1e6, help="little + big: bytes per hour on val (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_stream.json")
    ap.add_argument("--write-detector", type=Path, default=None, metavar="JSON",
                    help="install the settings chosen on val for this little (models/listen.json is what "
                         "kws-edge listen reads by default)")
    a = ap.parse_args(argv)
    root = find_dataset(a.data_dir)
    little, big = KwsModel(a.little), KwsModel(a.big)
    base = DetectorConfig()
    hop_frames = base.hop_ms * RATE // 1000 // little.feature_config.frame_step
    thresholds = np.round(np.arange(0.30, 0.96, 0.05), 2)
    alone_grid = grid(thresholds, (1.01,))
    verified_grid = grid(thresholds, (0.6, 0.7, 0.8, 0.9, 1.01))
    results: dict[str, Any] = {"little": str(a.little), "big": str(a.big), "encoding": a.encoding, "seed": a.seed}
    chosen = {}
    for split, hours in (("val", a.val_hours), ("test", a.hours)):
        heard = hear_split(little, split, root, hours, a.seed, hop_frames)
        if split == "val":
            alone = [(c, evaluate(heard, little.labels, c, None, a.encoding)) for c in tqdm(alone_grid, desc="val: little", file=sys.stderr)]
            verified = [(c, evaluate(heard, little.labels, c, big, a.encoding)) for c in tqdm(verified_grid, desc="val: little + big", file=sys.stderr)]
            chosen["little"], _ = choose(alone, a.max_fa, None)
            chosen["little + big"], _ = choose(verified, a.max_fa_verified, a.max_bytes)
            if a.write_detector is not None:
                write_detector(a.write_detector, little.name, chosen)
            continue
        for name, cfg in chosen.items():
            row = evaluate(heard, little.labels, cfg, big if "big" in name else None, a.encoding)
            row["detector"] = dataclasses.asdict(cfg)
            results[name] = row
        results["cpu_per_audio_second"] = real_time_factor(little, heard["10"][0].stream, chosen["little"])
        curves = {}
        for name, use_big in (("little", False), ("little + big", True)):
            c0 = chosen[name]
            pts = []
            for t in thresholds:
                cfg = dataclasses.replace(c0, threshold=float(t), sure=max(c0.sure, float(t)) if c0.sure <= 1 else c0.sure)
                r = evaluate(heard, little.labels, cfg, big if use_big else None, a.encoding)
                pts.append((r["keyword_free"]["fa_per_hour"], 100 - r["10dB"]["hit_pct"]))
            curves[name] = pts
        results["curves"] = {k: [{"fa_per_hour": x, "miss_pct": y} for x, y in v] for k, v in curves.items()}
        plot(a.out.with_suffix(".png"), curves)
    rows = [{"system": n, **{f"hit {s:g}dB": results[n][f"{s:g}dB"]["hit_pct"] for s in SNRS},
             "wrong 10dB": results[n]["10dB"]["wrong_pct"], "FA/h": results[n]["keyword_free"]["fa_per_hour"],
             "p95 latency s": results[n]["10dB"]["latency_p95_s"], "bytes/h": results[n]["bytes_per_hour"]}
            for n in chosen]
    print(format_table(rows, list(rows[0])))
    print(f"features + little: {1000 * results['cpu_per_audio_second']:.2f} ms of CPU per second of audio")
    write_results(a.out, results)
    print(f"wrote {a.out} and {a.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
