"""Synthetic speech for the listening models: `python -m trainers.synth` speaks English words with three
offline TTS engines into 1 s clips, for the `_unknown_` class and as extra keyword examples.

What is spoken: the non-keyword words of ``trainers/synth_words.txt`` (a few hundred common English
words without the 8 keywords and their rhymes or near-homophones, split train/val/test BY WORD, so the
words a model is chosen or scored on are words it never heard), and the 8 keywords themselves, labelled
as keywords: otherwise a synthetic voice would itself be a cue for "unknown". Keyword renditions are
assigned to train/val/test at random (80/10/10, seeded).

Who speaks (Debian packages espeak-ng, flite, festival, festvox-kallpc16k, festvox-kdlpc16k,
festvox-us-slt-hts):
- espeak-ng: voices en-us, en, en-gb-scotland, en-gb-x-rp, en-029, en-gb-x-gbclan, en-gb-x-gbcwmd, with
  the variants m1-m7, f1-f5, klatt, klatt2, klatt3, croak, whisper (or none), 120-210 words a minute,
  pitch 20-80;
- flite: its built-in voices kal, kal16, awb, rms, slt, duration stretch 0.8-1.3;
- festival: kal_diphone, ked_diphone, cmu_us_slt_arctic_hts, duration stretch 0.8-1.3.
Per non-keyword word: 6 espeak-ng, 3 flite, 3 festival renditions; per keyword four times as many.

Each rendition is resampled to 16 kHz mono, trimmed of leading and trailing silence (below 2 % of its
peak), dropped if it still lasts over 1 s, scaled to a peak drawn log-uniformly in [0.06, 0.8] and
placed at a random offset in a 1 s clip, written as 16-bit WAV. Every parameter is drawn from a
generator seeded by (seed, word), so a run is deterministic and adding words changes no other word's
clips. The cache is idempotent: a clip already on disk is not synthesised again. The cache lives
outside the repository, in $KWS_DATA_DIR/synth (clips under <engine>/, and manifest.json, read by
kws_rpc.lab.listen_data.load_synth).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import wave
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kws_rpc.audio.wav import encode_wav
from kws_rpc.lab.data import LABELS
from kws_rpc.audio.features import resample
from kws_rpc.lab.listen_data import SYNTH_DIR, SYNTH_MANIFEST

WORDS_FILE = Path(__file__).with_name("synth_words.txt")
RATE, CLIP = 16000, 16000
ESPEAK_VOICES = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
ESPEAK_VARIANTS = ("", *(f"m{i}" for i in range(1, 8)), *(f"f{i}" for i in range(1, 6)),
                   "klatt", "klatt2", "klatt3", "croak", "whisper")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
PER_WORD = {"espeak-ng": 6, "flite": 3, "festival": 3}
KEYWORD_FACTOR = 4
KEYWORD_SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))


@dataclasses.dataclass(frozen=True)
class Rendition:
    word: str
    split: str
    engine: str
    voice: str
    speed: float  # espeak-ng: words a minute; flite and festival: duration stretch
    pitch: int  # espeak-ng only (0-99)
    peak: float
    offset: float  # where in the free part of the clip the word starts, 0-1

    @property
    def key(self) -> str:
        h = hashlib.sha1(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.engine}/{self.word}-{h}.wav"


def read_words(path: Path = WORDS_FILE) -> dict[str, str]:
    """word -> split, from the committed list."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            word, split = line.split()
            out[word] = split
    return out


def plan(words: dict[str, str], seed: int, engines: tuple[str, ...] = tuple(PER_WORD),
         keywords: tuple[str, ...] = LABELS) -> list[Rendition]:
    """Every rendition to make, its parameters drawn from a generator seeded by (seed, word)."""
    out = []
    for word, split in [*words.items(), *((k, "") for k in keywords)]:
        rng = np.random.default_rng([seed, zlib.crc32(word.encode())])
        factor = KEYWORD_FACTOR if word in LABELS else 1
        for engine in engines:
            for _ in range(PER_WORD[engine] * factor):
                if engine == "espeak-ng":
                    variant = str(rng.choice(ESPEAK_VARIANTS))
                    voice = str(rng.choice(ESPEAK_VOICES)) + (f"+{variant}" if variant else "")
                    speed, pitch = float(rng.integers(120, 211)), int(rng.integers(20, 81))
                else:
                    voice = str(rng.choice(FLITE_VOICES if engine == "flite" else FESTIVAL_VOICES))
                    speed, pitch = round(float(rng.uniform(0.8, 1.3)), 3), 0
                peak = round(float(10 ** rng.uniform(np.log10(0.06), np.log10(0.8))), 4)
                offset = round(float(rng.random()), 4)
                s = split or str(rng.choice([n for n, _ in KEYWORD_SPLITS], p=[p for _, p in KEYWORD_SPLITS]))
                out.append(Rendition(word, s, engine, voice, speed, pitch, peak, offset))
    return out


def _read(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as w:
        rate, ch = w.getframerate(), w.getnchannels()
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0
    if ch > 1:
        x = x.reshape(-1, ch).mean(-1)
    return resample(x, rate, RATE)


def _speak(r: Rendition, tmp: Path) -> bytes:
    out = tmp / (hashlib.sha1(r.key.encode()).hexdigest() + ".wav")
    if r.engine == "espeak-ng":
        cmd = ["espeak-ng", "-v", r.voice, "-s", str(int(r.speed)), "-p", str(r.pitch), "-w", str(out), r.word]
    elif r.engine == "flite":
        cmd = ["flite", "-voice", r.voice, "--setf", f"duration_stretch={r.speed}", "-t", r.word, "-o", str(out)]
    else:
        script = tmp / (out.stem + ".scm")
        script.write_text(f"(voice_{r.voice})\n(Parameter.set 'Duration_Stretch {r.speed})\n"
                          f"(set! utt (SynthText \"{r.word}\"))\n(utt.save.wave utt \"{out}\" 'riff)\n")
        cmd = ["festival", "-b", str(script)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    data = out.read_bytes()
    out.unlink()
    return data


def clip_of(x: np.ndarray, r: Rendition) -> np.ndarray | None:
    """Trimmed, levelled and placed in 1 s; None if the word lasts over 1 s or is silent."""
    peak = np.abs(x).max() if len(x) else 0.0
    if peak <= 0:
        return None
    loud = np.flatnonzero(np.abs(x) > 0.02 * peak)
    x = x[loud[0] : loud[-1] + 1]
    if len(x) > CLIP:
        return None
    out = np.zeros(CLIP, np.float32)
    start = int(r.offset * (CLIP - len(x)))
    out[start : start + len(x)] = x * (r.peak / peak)
    return out


def make(r: Rendition, cache: Path, tmp: Path) -> bool:
    """Synthesises r into the cache unless it is there; False if it was dropped (over 1 s)."""
    path = cache / r.key
    if path.is_file():
        return True
    dropped = cache / "dropped" / r.key
    if dropped.is_file():
        return False
    clip = clip_of(_read(_speak(r, tmp)), r)
    target = path if clip is not None else dropped
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    partial.write_bytes(encode_wav(clip, RATE) if clip is not None else b"")
    os.replace(partial, target)
    return clip is not None


def available(engines: tuple[str, ...]) -> list[str]:
    """The engines whose program is installed."""
    return [e for e in engines if shutil.which(e)]


def synthesise(cache: Path, words: dict[str, str], seed: int, engines: tuple[str, ...], jobs: int = 2,
               progress: bool = True, keywords: tuple[str, ...] = LABELS) -> dict:
    """Makes every rendition of the plan (skipping those on disk) and writes the manifest."""
    todo = plan(words, seed, engines, keywords)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as t, cf.ThreadPoolExecutor(jobs) as pool:
        kept = list(tqdm(pool.map(lambda r: make(r, cache, Path(t)), todo), total=len(todo),
                         desc="synthesising", unit="clip", disable=not progress))
    clips = [{"path": r.key, **dataclasses.asdict(r)} for r, k in zip(todo, kept) if k]
    result = {"seed": seed, "engines": list(engines), "planned": len(todo), "dropped_over_1s": len(todo) - len(clips),
              "clips": clips}
    (cache / SYNTH_MANIFEST).write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("KWS_DATA_DIR", "data"),
                    help=f"dataset folder; clips go to its {SYNTH_DIR}/ (default: $KWS_DATA_DIR or ./data)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--words", type=Path, default=WORDS_FILE, help="'word split' lines (default: %(default)s)")
    ap.add_argument("--limit", type=int, help="only the first N words of the list (smoke tests)")
    ap.add_argument("--engines", default=",".join(PER_WORD), help="comma-separated (default: %(default)s)")
    ap.add_argument("--jobs", type=int, default=2, help="TTS processes at once")
    args = ap.parse_args(argv)
    engines = tuple(args.engines.split(","))
    missing = sorted(set(engines) - set(available(engines)))
    if missing:
        raise SystemExit(f"not installed: {', '.join(missing)} (apt-get install espeak-ng flite festival "
                         "festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts)")
    words = read_words(args.words)
    if args.limit:
        words = dict(list(words.items())[: args.limit])
    res = synthesise(Path(args.data_dir) / SYNTH_DIR, words, args.seed, engines, args.jobs)
    by = {}
    for c in res["clips"]:
        k = (c["split"], "keyword" if c["word"] in LABELS else "other")
        by[k] = by.get(k, 0) + 1
    print(f"{len(res['clips'])} clips ({res['dropped_over_1s']} renditions over 1 s dropped): "
          + ", ".join(f"{s} {kind} {n}" for (s, kind), n in sorted(by.items())))


if __name__ == "__main__":
    main()
