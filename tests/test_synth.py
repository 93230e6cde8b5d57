"""trainers.synth on two words and one keyword with the TTS engines installed (skipped without them):
16 kHz 1 s clips, the split of each word kept, deterministic by seed, and an idempotent cache."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from trainers import synth

ENGINES = tuple(synth.available(tuple(synth.PER_WORD)))
pytestmark = pytest.mark.skipif(not ENGINES, reason="no TTS engine installed (apt-get install espeak-ng flite festival)")


def test_word_list_is_split_by_word_and_free_of_keywords() -> None:
    words = synth.read_words()
    assert len(words) >= 300 and set(words.values()) == {"train", "val", "test"}
    assert not set(words) & {"down", "go", "left", "no", "right", "stop", "up", "yes", "know", "write", "yet"}
    counts = {s: sum(v == s for v in words.values()) for s in ("val", "test")}
    assert all(c >= 30 for c in counts.values()), counts


def test_synthesis_of_a_few_words(tmp_path: Path) -> None:
    words = {"apple": "train", "table": "test"}
    res = synth.synthesise(tmp_path, words, seed=0, engines=ENGINES, progress=False, keywords=("yes",))
    clips = res["clips"]
    assert {c["word"] for c in clips} == {"apple", "table", "yes"}
    assert all(c["split"] == words[c["word"]] for c in clips if c["word"] != "yes")
    assert {c["engine"] for c in clips} == set(ENGINES)
    for c in clips[:6]:
        with wave.open(str(tmp_path / c["path"])) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (16000, 1, 2, 16000)
            x = np.frombuffer(w.readframes(16000), np.int16)
        assert np.abs(x).max() > 1000, "a word is in the clip"
    stamp = {c["path"]: (tmp_path / c["path"]).stat().st_mtime_ns for c in clips}
    again = synth.synthesise(tmp_path, words, seed=0, engines=ENGINES, progress=False, keywords=("yes",))
    assert again["clips"] == clips, "deterministic by seed"
    assert all((tmp_path / p).stat().st_mtime_ns == t for p, t in stamp.items()), "cached clips are not redone"
    other = synth.plan(words, seed=1, engines=ENGINES, keywords=("yes",))
    assert {r.key for r in other}.isdisjoint(stamp), "another seed, other renditions"
