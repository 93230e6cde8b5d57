"""The listening models' extra classes: silence and unknown builders (kws_rpc.lab.listen_data), the selection and
training draws (trainers.listen, numpy only), and a 10-label model loading in the runtime with its card."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from kws_rpc.lab import listen_data as listen
from kws_rpc.lab.data import LABELS
from tf_child import TfChild


def words(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n toy 'keyword clips': a tone burst whose pitch encodes the label, at a random place."""
    labels = rng.integers(0, len(LABELS), size=n)
    audio = np.zeros((n, 16000), np.float32)
    t = np.arange(4800) / 16000
    for i, y in enumerate(labels):
        s = rng.integers(0, 16000 - 4800)
        audio[i, s : s + 4800] = 0.5 * np.sin(2 * np.pi * (200 + 100 * y) * t)
    return audio, labels


def test_labels_extend_the_keywords_in_order() -> None:
    assert listen.LISTEN_LABELS[:8] == LABELS and listen.LISTEN_LABELS[8:] == ("_silence_", "_unknown_")


def test_reversed_clips_are_time_reversed_keywords() -> None:
    audio, _ = words(5, np.random.default_rng(0))
    rev = listen.reversed_clips(audio, 20, np.random.default_rng(1))
    assert rev.shape == (20, 16000)
    assert all(any(np.array_equal(r[::-1], a) for a in audio) for r in rev)


def test_splices_join_two_different_keywords_at_their_centres() -> None:
    rng = np.random.default_rng(0)
    audio, labels = words(40, rng)
    out = listen.spliced_clips(audio, labels, 50, rng)
    assert out.shape == (50, 16000) and np.isfinite(out).all()
    assert (np.abs(out).max(-1) > 0.1).all(), "each splice holds speech"


def test_splices_skip_pairs_that_would_be_a_keyword_again() -> None:
    rng = np.random.default_rng(0)
    audio, _ = words(2, rng)
    labels = np.array([LABELS.index("go"), LABELS.index("no")])
    with pytest.raises(ValueError, match="no keyword pair"):  # only go/no: every splice would be a keyword
        listen.spliced_clips(audio, labels, 1, rng)


def test_energy_centre_finds_the_burst() -> None:
    x = np.zeros(16000, np.float32)
    x[9000:10000] = 1.0
    assert abs(listen.energy_centre(x) - 9500) <= 160


def test_silence_clips_are_quiet_varied_and_deterministic() -> None:
    rec = [np.random.default_rng(i).standard_normal(200_000).astype(np.float32) * 0.1 for i in range(3)]
    a = listen.silence_clips(rec, "test", 200, np.random.default_rng(0))
    b = listen.silence_clips(rec, "test", 200, np.random.default_rng(0))
    assert np.array_equal(a, b) and a.shape == (200, 16000)
    rms = np.sqrt((a.astype(np.float64) ** 2).mean(-1))
    assert rms.max() < 0.2 and (rms < 1e-4).mean() > 0.1, "levels from near-digital silence to -15 dBFS"
    assert len(np.unique(np.round(np.log10(rms + 1e-9)))) >= 4
    assert listen.silence_clips([], "test", 20, np.random.default_rng(0)).shape == (20, 16000)


def test_synthetic_clips_are_read_by_split(tmp_path: Path) -> None:
    from kws_rpc.audio.wav import encode_wav

    root = tmp_path
    (root / "synth" / "e").mkdir(parents=True)
    clips = []
    for i, (word, split) in enumerate([("apple", "train"), ("table", "test"), ("yes", "test"), ("go", "train")]):
        (root / "synth" / "e" / f"{i}.wav").write_bytes(encode_wav(np.full(16000, 0.1 * (i + 1)), 16000))
        clips.append({"path": f"e/{i}.wav", "word": word, "split": split})
    (root / "synth" / "manifest.json").write_text(json.dumps({"clips": clips}))
    audio, rows = listen.load_synth(root, "test", keywords=False)
    assert [r["word"] for r in rows] == ["table"] and audio.shape == (1, 16000)
    assert audio[0, 0] == pytest.approx(0.2, abs=1e-3)
    assert [r["word"] for r in listen.load_synth(root, "test", keywords=True)[1]] == ["yes"]
    assert listen.load_synth(tmp_path / "nowhere", "test", keywords=False)[0].shape == (0, 16000)


def test_training_draw_has_the_configured_shares(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """trainers.listen is numpy only: its epoch draw is tested here, on toy clips and a toy manifest."""
    import trainers.listen as tl

    rng = np.random.default_rng(0)
    audio, labels = words(300, rng)
    synth = (audio[:30] * 0.5, [{"word": "apple"}] * 30)
    monkeypatch.setattr(tl, "load_synth", lambda root, split, keywords: (np.zeros((0, 16000), np.float32), [])
                        if keywords else synth)
    monkeypatch.setattr(tl, "load_noise", lambda root: [rng.standard_normal(100_000).astype(np.float32)])
    data = tl.ListenData(tmp_path, tl.ListenConfig(), tl.AugmentConfig(), audio, labels)
    x, y = data.epoch(np.random.default_rng(1))
    assert x.shape[0] == y.shape[0] and y.shape[1] == 10 and np.allclose(y.sum(1), 1)
    share = y.mean(0)
    assert share[listen.SILENCE_INDEX] == pytest.approx(0.10, abs=0.01)
    assert share[listen.UNKNOWN_INDEX] == pytest.approx(0.13, abs=0.01)
    assert np.abs(x).max() <= 1.0
    x2, _ = data.epoch(np.random.default_rng(1))
    assert np.array_equal(x, x2), "an epoch is a function of its generator"


def test_room_level_gives_soft_and_loud_words_the_same_noise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """level="room": the noise is set against the split's median clip, so a clip at a tenth of the level meets
    the noise a loud one does; level="clip" scales the noise down with the clip."""
    import trainers.listen as tl

    rng = np.random.default_rng(0)
    audio, labels = words(200, rng)
    audio[::2] *= 0.1  # every other word 20 dB softer
    noise = [rng.standard_normal(100_000).astype(np.float32)]
    monkeypatch.setattr(tl, "load_synth", lambda root, split, keywords: (np.zeros((0, 16000), np.float32), [])
                        if keywords else (audio[:30], [{"word": "apple"}] * 30))
    monkeypatch.setattr(tl, "load_noise", lambda root: noise)
    aug = tl.AugmentConfig(time_shift=0, gain=(1.0, 1.0))
    quiet = {}
    for level in ("clip", "room"):
        cfg = tl.ListenConfig(level=level, clean_share=0.0, snr_db=(10.0, 10.0), synth_keywords=False)
        x, _ = tl.ListenData(tmp_path, cfg, aug, audio, labels).epoch(np.random.default_rng(1))
        mixed = x[: len(audio)]  # the epoch starts with the keyword clips, in order
        power = [float(np.mean(np.square(mixed[i][audio[i] == 0]))) for i in range(len(audio))]  # noise alone
        quiet[level] = np.median(power[::2]) / np.median(power[1::2])  # noise under soft / under loud words
    assert quiet["clip"] == pytest.approx(0.01, rel=0.3)
    assert quiet["room"] == pytest.approx(1.0, rel=0.3)
    with pytest.raises(ValueError, match="level"):
        tl.ListenData(tmp_path, tl.ListenConfig(level="hall"), aug, audio, labels)


def toy_listen_tflite() -> bytes:
    """Child: a toy DS-CNN with the 10 listening outputs, exported int8 with int8 logits out."""
    import dataclasses as dc

    from kws_rpc.lab.listen_data import LISTEN_LABELS
    from trainers.architectures import dscnn
    from trainers.export import to_tflite
    from trainers.recipes import LITTLE_LISTEN
    from trainers.train import build_model

    r = dc.replace(LITTLE_LISTEN, params=dscnn.Params(filters=8, blocks=1))
    assert r.labels == LISTEN_LABELS
    x = np.random.default_rng(0).normal(size=(32, *r.feature.shape)).astype(np.float32)
    return to_tflite(build_model(r, x.mean(axis=(0, 1)), x.var(axis=(0, 1))), r, x)


def test_a_ten_label_model_loads_with_its_card(tmp_path: Path, tf_child: TfChild) -> None:
    from kws_rpc.model.card import ModelCard, file_facts
    from kws_rpc.model.kws_model import KwsModel
    from kws_rpc.lab.noisy_eval import is_listening

    content = tf_child.run(toy_listen_tflite)
    path = tmp_path / "toy_listen.tflite"
    path.write_bytes(content)
    little = json.loads((Path(__file__).resolve().parent.parent / "models" / "little.json").read_text())
    card = ModelCard.from_dict({**little, **file_facts(content), "name": "toy_listen",
                                "labels": list(listen.LISTEN_LABELS)})
    card.save(path.with_suffix(".json"))
    m = KwsModel(path)
    p = m.predict(m.features(np.zeros((3, 16000), np.float32)))
    assert p.shape == (3, 10) and np.allclose(p.sum(-1), 1, atol=1e-3)
    assert m.labels[-2:] == ["_silence_", "_unknown_"] and is_listening(m)
    assert dataclasses.is_dataclass(m.card)
