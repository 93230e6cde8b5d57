"""Streaming training windows (kws_rpc.lab.stream_windows) and the keyword-free streams they are cut from
(kws_rpc.lab.streams): numpy only, on toy clips."""

from __future__ import annotations

import numpy as np

from kws_rpc.lab import stream_windows as sw
from kws_rpc.lab.listen_data import SILENCE_INDEX, UNKNOWN_INDEX
from kws_rpc.lab.streams import RATE, Stream, keyword_free


def bursts(n: int, rng: np.random.Generator) -> np.ndarray:
    """n toy words: 250 ms of noise in the middle of a 1 s clip."""
    audio = np.zeros((n, 16000), np.float32)
    audio[:, 6000:10000] = 0.3 * rng.standard_normal((n, 4000))
    return audio


def test_inside_share_follows_the_shift() -> None:
    energy = sw.frame_energy(bursts(1, np.random.default_rng(0)).repeat(4, 0))
    share = sw.inside_share(energy, np.array([0, 6000, 8000, -8000]))
    np.testing.assert_allclose(share, [1.0, 1.0, 0.5, 0.5], atol=0.03)


def test_shifted_words_stay_inside_and_partial_words_do_not() -> None:
    rng = np.random.default_rng(1)
    audio = bursts(50, rng)
    total = np.square(audio[0], dtype=np.float64).sum()
    moved = sw.shifted(audio, 8000, rng)
    kept = np.square(moved, dtype=np.float64).sum(-1) / total
    assert (kept >= 0.85).all() and not np.array_equal(moved, audio)
    cut = np.square(sw.partial(audio, 40, rng), dtype=np.float64).sum(-1) / total
    assert cut.shape == (40,) and (cut < 0.5).all() and (cut > 0.02).all()


def test_windows_holding_a_word_are_unknown_the_rest_silence() -> None:
    stream = Stream("toy", np.zeros(4 * RATE, np.float32), [], [(1.0, 1.5), (2.9, 2.95)])
    starts = (np.array([0.0, 0.1, 1.875, 2.0]) * RATE).astype(int)
    assert sw.window_labels(stream, starts).tolist() == [SILENCE_INDEX, UNKNOWN_INDEX, SILENCE_INDEX, UNKNOWN_INDEX]


def test_keyword_free_streams_record_where_the_words_are() -> None:
    rng = np.random.default_rng(0)
    words = bursts(3, rng)
    noise = [rng.standard_normal(5 * RATE).astype(np.float32)]
    (stream,) = keyword_free(60 / 3600, words, noise, 0.01, np.random.default_rng(2))
    assert len(stream.audio) == 60 * RATE and stream.keywords == [] and len(stream.speech) >= 5
    for a, b in stream.speech:
        assert abs((b - a) - 0.25) < 0.01  # each word's own extent, not its 1 s clip
