"""The streaming benchmark's bookkeeping: streams are deterministic by seed, and events are matched to
keywords as documented (right label, wrong label, false accept, latency from the clip's end)."""

import dataclasses

import numpy as np

from bench.bench_stream import keyword_stream, score


def test_an_event_is_matched_to_the_clip_it_falls_in_or_just_after() -> None:
    keywords = [(1.0, 2.0, "yes"), (4.0, 5.0, "no")]
    events = [(1.9, "yes"), (2.2, "yes"), (5.5, "go"), (8.0, "up")]
    s = score(events, keywords)
    assert (s["hits"], s["wrong"], s["false"]) == (1, 1, 2)  # a second event on one clip is a false accept
    assert s["latency"] == [1.9 - 2.0] and s["hit_of"] == [0, -1, -1, -1]


def test_loopback_latency_is_from_the_clip_end_to_the_printed_event_split_by_who_decided() -> None:
    from bench.stream_loopback import latencies

    keywords = [(1.0, 2.0, "yes"), (4.0, 5.0, "no"), (7.0, 8.0, "up")]
    events = [{"t": 2.4, "detected_t": 1.9, "label": "yes", "decided_by": "big_stream_int8"},
              {"t": 4.8, "detected_t": 4.8, "label": "no", "decided_by": "little"},
              {"t": 7.9, "detected_t": 7.5, "label": "go", "decided_by": "big_stream_int8"},
              {"t": 12.0, "detected_t": 11.0, "label": "up", "decided_by": "little"}]
    s = latencies(events, keywords)
    assert (s["hits"], s["wrong"], s["false"]) == (2, 1, 1)
    assert s["latency"]["server"] == [2.4 - 2.0] and s["latency"]["little"] == [4.8 - 5.0]


def test_keyword_streams_are_a_function_of_the_seed() -> None:
    rng = np.random.default_rng(0)
    clips = rng.uniform(-0.5, 0.5, (5, 16000)).astype(np.float32)
    labels = np.arange(5)
    noise = [rng.standard_normal(48000).astype(np.float32)]
    a = keyword_stream(clips, labels, noise, 0.1, 10.0, np.random.default_rng(7))
    b = keyword_stream(clips, labels, noise, 0.1, 10.0, np.random.default_rng(7))
    np.testing.assert_array_equal(a.audio, b.audio)
    assert a.keywords == b.keywords and len(a.keywords) == 5
    starts = [k[0] for k in a.keywords]
    assert starts == sorted(starts) and all(e - s == 1.0 for s, e, _ in a.keywords)


def test_big_below_confirm_rejects_what_it_would_have_confirmed_and_the_bytes_are_the_same() -> None:
    """On a stream of the fixture words in noise, the little listening and big verifying every detection."""
    from pathlib import Path

    from bench.bench_stream import detections, hear, verified_run
    from edge.stream import DetectorConfig, is_keyword
    from kws_rpc.audio.wav import read_wav
    from kws_rpc.lab.noise import median_reference
    from kws_rpc.model.kws_model import KwsModel

    repo = Path(__file__).resolve().parent.parent
    clips = sorted((repo / "tests" / "fixtures" / "clips").glob("*.wav"))
    audio = np.stack([read_wav(str(p))[0] for p in clips]).astype(np.float32)
    rng = np.random.default_rng(1)
    noise = [0.05 * rng.standard_normal(160000).astype(np.float32)]
    stream = keyword_stream(audio, np.arange(len(clips)), noise, median_reference(audio), 20.0, rng)
    little = KwsModel(repo / "models" / "little_stream2.tflite")
    big = KwsModel(repo / "models" / "big_stream_int8.tflite")
    heard = hear(little, stream, 10)
    loose = DetectorConfig(threshold=0.3, smooth=1, sure=1.01)
    run = verified_run(heard, little.labels, loose, big, "logmel-q5z")
    named = sorted(p for _, label, p, _ in run if is_keyword(label))
    assert len(run) >= 8 and all(p is not None and 0 < p <= 1 for *_, p, _ in run) and named[0] < named[-1]
    confirm = (named[0] + named[-1]) / 2
    events, asks, sent = detections(heard, little.labels, loose, big, "logmel-q5z")
    strict, strict_asks, strict_sent = detections(heard, little.labels, dataclasses.replace(loose, confirm=confirm),
                                                  big, "logmel-q5z")
    assert (asks, sent) == (strict_asks, strict_sent) == (len(run), sum(r[3] for r in run)) and sent > 0
    assert events == [(t, label) for t, label, p, _ in run if is_keyword(label)]
    assert strict == [(t, label) for t, label, p, _ in run if is_keyword(label) and p >= confirm]
    assert 0 < len(strict) < len(events)
