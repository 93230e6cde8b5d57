"""kws_rpc.lab.noise: the SNR asked for is the SNR measured, and the noise portions of the splits are disjoint."""

from __future__ import annotations

import numpy as np
import pytest

from kws_rpc.lab import noise


def word_clip(rng: np.random.Generator) -> np.ndarray:
    """A 1 s clip with a 400 ms 'word' (a tone burst) and near silence around it."""
    x = 0.001 * rng.standard_normal(16000)
    t = np.arange(6400) / 16000
    x[5000:11400] += 0.3 * np.sin(2 * np.pi * 440 * t)
    return x.astype(np.float32)


@pytest.mark.parametrize("snr", [30.0, 20.0, 10.0, 5.0, 0.0, -5.0])
def test_requested_snr_is_measured_snr(snr: float) -> None:
    rng = np.random.default_rng(0)
    clip, n = word_clip(rng), rng.standard_normal(16000).astype(np.float32)
    g = noise.scale_for_snr(clip, n, snr)
    assert noise.snr_db(clip, g * n) == pytest.approx(snr, abs=1e-3)
    mixed = noise.mix(clip, n, snr)
    k = max(1.0, float(np.abs(clip + g * n).max()))  # a mix that would clip is scaled down as a whole
    assert np.allclose(mixed * k, clip + g * n, atol=1e-5)
    assert noise.snr_db(clip / k, (mixed - clip / k)) == pytest.approx(snr, abs=1e-3)


def test_snr_uses_the_loudest_300_ms() -> None:
    x = np.zeros(16000, np.float32)
    x[8000:12800] = 1.0  # exactly 300 ms at power 1
    assert noise.peak_window_power(x) == pytest.approx(1.0)
    assert noise.snr_db(x, np.full(16000, 0.1, np.float32)) == pytest.approx(20.0, abs=1e-6)


def test_loud_mixes_are_scaled_not_clipped() -> None:
    rng = np.random.default_rng(1)
    clip = 0.9 * np.sign(rng.standard_normal(16000)).astype(np.float32)
    out = noise.mix(clip, rng.standard_normal(16000).astype(np.float32), 0.0)
    assert np.abs(out).max() <= 1.0 + 1e-6


def test_portions_are_disjoint_and_cover_the_recording() -> None:
    rec = np.arange(1_000_003, dtype=np.float32)
    parts = {s: noise.portion(rec, s) for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == len(rec)
    assert np.array_equal(np.concatenate([parts["train"], parts["val"], parts["test"]]), rec)
    assert parts["train"][-1] < parts["val"][0] and parts["val"][-1] < parts["test"][0]
    assert len(parts["val"]) == pytest.approx(0.1 * len(rec), abs=2)
    with pytest.raises(ValueError):
        noise.portion(rec, "dev")


def test_mix_batch_is_deterministic_and_leaves_inf_clean() -> None:
    rng = np.random.default_rng(2)
    clips = np.stack([word_clip(rng) for _ in range(4)])
    recs = [rng.standard_normal(50_000).astype(np.float32)]
    snrs = np.array([np.inf, 10.0, 0.0, np.inf])
    a = noise.mix_batch(clips, recs, snrs, np.random.default_rng(3))
    b = noise.mix_batch(clips, recs, snrs, np.random.default_rng(3))
    assert np.array_equal(a, b)
    assert np.array_equal(a[[0, 3]], clips[[0, 3]]) and not np.array_equal(a[1], clips[1])


def test_draw_snrs_shares() -> None:
    s = noise.draw_snrs(10_000, np.random.default_rng(0), clean_share=0.25, low=0, high=30)
    assert np.isinf(s).mean() == pytest.approx(0.25, abs=0.02)
    finite = s[np.isfinite(s)]
    assert finite.min() >= 0 and finite.max() <= 30


@pytest.mark.parametrize("kind", noise.NOISE_KINDS)
def test_coloured_noise_has_unit_rms_and_its_slope(kind: str) -> None:
    x = noise.coloured(kind, 16000, np.random.default_rng(0))
    assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)
    p = np.abs(np.fft.rfft(x)) ** 2
    low, high = p[20:200].mean(), p[4000:6000].mean()  # ~20-200 Hz against ~4-6 kHz
    if kind == "white":
        assert 0.5 < low / high < 2
    elif kind in ("pink", "brown"):
        assert low / high > 10


def test_evaluation_noise_is_the_test_portion_at_the_asked_snr(dataset_root, test_audio) -> None:
    """kws_rpc.lab.noisy_eval mixes the test split's clips with the test portion, deterministically."""
    from kws_rpc.lab import noisy_eval

    audio = test_audio[0][:40]
    a = noisy_eval.noisy_sets(dataset_root, "test", audio)
    b = noisy_eval.noisy_sets(dataset_root, "test", audio)
    assert list(a) == ["clean", "20dB", "10dB", "5dB", "0dB"]
    assert all(np.array_equal(a[k], b[k]) for k in a) and a["clean"] is audio
    checked = 0
    for clip, mixed in zip(audio, a["10dB"]):
        if np.abs(mixed).max() < 0.999:  # not rescaled: the added noise is mixed - clip
            assert noise.snr_db(clip, mixed - clip) == pytest.approx(10.0, abs=0.01)
            checked += 1
    assert checked >= 30


def test_fixed_level_noise_is_the_same_for_soft_and_loud_clips(dataset_root, test_audio) -> None:
    """At a fixed level every clip meets noise of one power, set against the median clip, so a soft clip's
    own SNR is lower than the nominal one and a loud clip's higher."""
    from kws_rpc.lab import noisy_eval

    audio = test_audio[0][:40]
    sets = noisy_eval.noisy_sets(dataset_root, "test", audio, snrs=(10.0,), level="fixed")
    ref = noise.median_reference(audio)
    own, checked = [], 0
    for clip, mixed in zip(audio, sets["10dB"]):
        if np.abs(mixed).max() < 0.999:
            n = mixed - clip
            assert 10 * np.log10(ref / np.mean(np.square(n, dtype=np.float64))) == pytest.approx(10.0, abs=0.01)
            own.append(noise.snr_db(clip, n))
            checked += 1
    assert checked >= 30
    assert min(own) < 5.0 < 15.0 < max(own)  # the clips' own SNRs spread around the nominal 10 dB
    with pytest.raises(ValueError, match="level"):
        noisy_eval.noisy_sets(dataset_root, "test", audio, level="loud")
