"""The numpy MFCC must equal tf.signal's pipeline (the reference implementation) within float tolerance.

tf.signal runs in the tf_child process (tests/tf_child.py); the comparison runs here.
"""

import numpy as np
import pytest

from kws_rpc.audio.features import FeatureConfig, log_mel, resample
from tf_child import TfChild

CONFIGS = [
    FeatureConfig(),
    FeatureConfig(num_mfcc=10, upper_hz=7600.0),
    FeatureConfig(num_mfcc=0, upper_hz=7600.0),
    FeatureConfig(frame_length=480, frame_step=160, fft_length=512, num_mfcc=40, lower_hz=60.0, upper_hz=7800.0),
    FeatureConfig(sample_rate=8000, clip_samples=8000, frame_length=256, frame_step=128, fft_length=256,
                  num_mel_bins=32, upper_hz=4000.0, num_mfcc=13),
]


def tf_reference(x: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """The reference pipeline in tf.signal. Runs in the TensorFlow child process."""
    import tensorflow as tf

    stft = tf.signal.stft(x, cfg.frame_length, cfg.frame_step, cfg.fft_length)
    weights = tf.signal.linear_to_mel_weight_matrix(cfg.num_mel_bins, cfg.fft_length // 2 + 1, cfg.sample_rate,
                                                    cfg.lower_hz, cfg.upper_hz)
    log_mel = tf.math.log(tf.tensordot(tf.abs(stft), weights, 1) + 1e-6)
    if cfg.num_mfcc:
        return tf.signal.mfccs_from_log_mel_spectrograms(log_mel)[..., : cfg.num_mfcc].numpy()
    return log_mel.numpy()


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.shape}")
def test_matches_tf_signal(cfg: FeatureConfig, tf_child: TfChild) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, cfg.clip_samples)) * 0.1).astype(np.float32)
    x[0, : cfg.clip_samples // 2] = 0.0  # silence: the log offset path
    ours = log_mel(x, cfg)
    assert ours.shape == (3, *cfg.shape)
    np.testing.assert_allclose(ours, tf_child.run(tf_reference, x, cfg), atol=2e-4, rtol=1e-4)


def test_single_clip_equals_batch_row() -> None:
    cfg = FeatureConfig()
    x = np.random.default_rng(1).uniform(-1, 1, (2, cfg.clip_samples)).astype(np.float32)
    # Equal up to float32 rounding: OpenBLAS may sum a row of the mel matmul in another order for another
    # number of rows (bit-equal on Intel here, one ulp apart on AMD EPYC); a wrong row would be far off.
    np.testing.assert_allclose(log_mel(x[1], cfg), log_mel(x, cfg)[1], rtol=1e-6, atol=1e-6)


def test_a_batch_larger_than_a_chunk_equals_its_rows() -> None:
    """log_mel() splits big batches into CHUNK_CLIPS pieces; the rows must not depend on the split."""
    from kws_rpc.audio.features import CHUNK_CLIPS

    cfg = FeatureConfig(num_mfcc=0, upper_hz=7600.0, peak_normalize=0.5)
    x = np.random.default_rng(2).uniform(-0.3, 0.3, (CHUNK_CLIPS * 2 + 3, cfg.clip_samples)).astype(np.float32)
    whole = log_mel(x, cfg)
    assert whole.shape == (len(x), *cfg.shape)
    for i in (0, CHUNK_CLIPS - 1, CHUNK_CLIPS, len(x) - 1):
        np.testing.assert_allclose(whole[i], log_mel(x[i], cfg), rtol=1e-6, atol=1e-6)  # BLAS rounding, as above


def test_wrong_length_is_rejected() -> None:
    with pytest.raises(ValueError, match="16000 samples"):
        log_mel(np.zeros(15999, np.float32), FeatureConfig())


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError):
        FeatureConfig(num_mfcc=50, num_mel_bins=40)
    with pytest.raises(ValueError):
        FeatureConfig(upper_hz=9000.0)


def test_resample_keeps_a_tone() -> None:
    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    down = resample(tone, 16000, 8000)
    assert down.shape == (8000,)
    spectrum = np.abs(np.fft.rfft(down))
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 Hz bins over 1 s
    back = resample(down, 8000, 16000)
    np.testing.assert_allclose(back[100:-100], tone[100:-100], atol=1e-3)


def test_peak_normalize_levels_every_clip_and_caps_the_gain() -> None:
    from kws_rpc.audio.features import MAX_GAIN, normalize_peak

    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (3, 16000)).astype(np.float32) * np.array([[0.9], [0.01], [1e-6]], np.float32)
    y = normalize_peak(x, 0.5)
    np.testing.assert_allclose(np.abs(y[:2]).max(axis=1), 0.5, rtol=1e-6)
    assert np.abs(y[2]).max() <= 1e-6 * MAX_GAIN * 1.0001  # near-silence gets at most +60 dB
    assert not np.any(normalize_peak(np.zeros((1, 16000), np.float32), 0.5))  # and zeros stay zeros


def test_peak_normalized_features_do_not_depend_on_the_recording_level() -> None:
    cfg = FeatureConfig(num_mfcc=0, upper_hz=7600.0, peak_normalize=0.5)
    x = np.random.default_rng(3).uniform(-0.8, 0.8, cfg.clip_samples).astype(np.float32)
    np.testing.assert_allclose(log_mel(x / 300, cfg), log_mel(x, cfg), atol=1e-3)
    plain = FeatureConfig(num_mfcc=0, upper_hz=7600.0)
    assert np.abs(log_mel(x / 300, plain) - log_mel(x, plain)).mean() > 5  # without it, 50 dB down moves every bin


def test_peak_normalize_travels_in_the_proto_config() -> None:
    from kws_rpc.wire.codec import config_from_proto, config_to_proto

    cfg = FeatureConfig(num_mfcc=0, peak_normalize=0.5)
    assert config_from_proto(config_to_proto(cfg)) == cfg
    assert config_to_proto(FeatureConfig()).SerializeToString() == config_to_proto(
        FeatureConfig(peak_normalize=0.0)).SerializeToString()
    with pytest.raises(ValueError):
        FeatureConfig(peak_normalize=2.0)
