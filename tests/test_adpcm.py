"""IMA ADPCM (kws_rpc.audio.adpcm) against the reference implementation CPython ships (audioop, Python <= 3.12),
and the IMA ADPCM WAV files kws_rpc.audio.wav writes and reads."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from kws_rpc.audio import adpcm
from kws_rpc.audio.wav import decode_wav, encode_wav, read_wav

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    audioop = pytest.importorskip("audioop")  # removed in Python 3.13: the cross-check needs 3.11/3.12

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "clips"


def signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    speech = np.round(read_wav(str(FIXTURES / "yes.wav"))[0] * 32768).clip(-32768, 32767)
    square = np.where(np.sin(2 * np.pi * 200 * t) > 0, 32767, -32768)  # drives the predictor into its clamps
    noisy = np.sin(2 * np.pi * 440 * t) * 8000 + rng.normal(0, 3000, t.size)
    return {"speech": speech, "square": square, "noise": noisy.clip(-32768, 32767), "short": speech[:700]}


@pytest.mark.parametrize("name", ["speech", "square", "noise", "short"])
@pytest.mark.parametrize("block_align", [256, 1024])
def test_blocks_match_audioop(name: str, block_align: int) -> None:
    """Block by block, from the state in the block's header: the codes equal audioop.lin2adpcm's (which
    puts the earlier sample in the high nibble) and the samples equal audioop.adpcm2lin's."""
    x = signals()[name].astype(np.int16)
    data = adpcm.encode(x, block_align)
    ours = adpcm.decode(data, len(x), block_align)
    per = adpcm.samples_per_block(block_align)
    blocks = -(-len(x) // per)
    assert len(data) == (blocks - 1) * block_align + 4 + (len(x) - (blocks - 1) * per) // 2
    for b in range(blocks):
        raw = data[b * block_align : (b + 1) * block_align]
        state = (int.from_bytes(raw[:2], "little", signed=True), raw[2])
        chunk = x[b * per : (b + 1) * per]
        assert state[0] == chunk[0] and ours[b * per] == chunk[0]  # the header holds the block's first sample
        n = len(chunk) - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ref, _ = audioop.lin2adpcm(chunk[1:].astype("<i2").tobytes(), 2, state)
            ref_pcm, _ = audioop.adpcm2lin(ref, 2, state)
        nib = np.frombuffer(raw[4:], np.uint8)
        assert ((nib & 15) << 4 | nib >> 4).astype(np.uint8).tobytes()[: n // 2] == ref[: n // 2]
        m = n // 2 * 2  # audioop drops an odd last sample: compare the whole bytes
        np.testing.assert_array_equal(ours[b * per + 1 : b * per + 1 + m], np.frombuffer(ref_pcm, "<i2")[:m])


def test_wav_round_trip_is_a_quarter_of_pcm_and_close() -> None:
    audio, rate = read_wav(str(FIXTURES / "stop.wav"))
    wav = encode_wav(audio, rate, "ima-adpcm")
    pcm = encode_wav(audio, rate)
    assert len(wav) < len(pcm) / 3.9
    back, back_rate = decode_wav(wav)
    assert back_rate == rate and back.shape == audio.shape
    snr = 10 * np.log10(np.sum(audio.astype(np.float64) ** 2) / np.sum((audio - back).astype(np.float64) ** 2))
    assert snr > 15, snr


@pytest.mark.parametrize("length", [1, 2, 2041, 2042, 2043, 2 * 2041 + 1, 16000])
def test_wav_round_trip_of_every_last_block_length(length: int) -> None:
    """The last block may hold one sample (its header alone) or a few: every length must come back whole.
    (A clip of 2,042 samples, one more than a 1,024-byte block holds, was refused by its own decoder.)"""
    x = np.sin(np.arange(length) / 5).astype(np.float32) * 0.3
    back, _ = decode_wav(encode_wav(x, 16000, "ima-adpcm"))
    assert back.shape == x.shape
    assert np.abs(back - x).max() < 0.05


def test_unknown_wav_codec_is_refused() -> None:
    with pytest.raises(ValueError, match="ima-adpcm"):
        encode_wav(np.zeros(10, np.float32), 16000, "mp3")
