"""MicroBatcher on the served model: same answers as unbatched, batches really form, errors reach the
caller they belong to, bounded queue, drain on close."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from kws_rpc.audio.wav import decode_wav
from kws_rpc.errors import ModelMismatch, Overloaded, Unavailable
from kws_rpc.model.batching import MicroBatcher
from kws_rpc.model.core import InferenceCore
from kws_rpc.model.kws_model import KwsModel


@pytest.fixture(scope="module")
def model(served_model_path: Path) -> KwsModel:
    return KwsModel(served_model_path)


@pytest.fixture(scope="module")
def feats(model: KwsModel, clip_wavs: dict[str, bytes]) -> np.ndarray:
    return np.stack([model.features(*decode_wav(w)) for w in clip_wavs.values()])


class BrokenModel(KwsModel):
    """A real model whose batches fail when one row is all 123.0 (to test error delivery)."""

    def predict(self, feats: np.ndarray) -> np.ndarray:
        if np.any(np.all(np.asarray(feats) == 123.0, axis=(-2, -1))):
            raise RuntimeError("poisoned batch")
        return super().predict(feats)


def test_batched_results_equal_unbatched(model: KwsModel, feats: np.ndarray) -> None:
    direct = np.concatenate([model.predict(f) for f in feats])
    sizes: list[int] = []
    # A one-minute delay: the batch runs when it is full, however slowly the requests arrive.
    batcher = MicroBatcher(max_batch_size=len(feats), max_delay_ms=60_000, on_batch=lambda _, n: sizes.append(n))
    try:
        futures = [batcher.submit(model, f) for f in feats]
        batched = np.concatenate([f.result(30) for f in futures])
    finally:
        batcher.close()
    np.testing.assert_allclose(batched, direct, atol=1e-6)
    assert sizes == [len(feats)]  # one invocation


def test_batches_form_under_concurrency(model: KwsModel, feats: np.ndarray) -> None:
    sizes: list[int] = []
    # 32 callers, batches of 16 and a one-minute delay: batches form however the threads are scheduled,
    # and each runs as soon as it is full.
    batcher = MicroBatcher(max_batch_size=16, max_delay_ms=60_000, workers=2, on_batch=lambda _, n: sizes.append(n))
    start = threading.Barrier(32)

    def call(i: int) -> np.ndarray:
        start.wait()
        return batcher.predict(model, feats[i % len(feats)], timeout=30)

    try:
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(call, range(32)))
    finally:
        batcher.close()
    expected = model.predict(feats)
    for i, r in enumerate(results):
        np.testing.assert_allclose(r[0], expected[i % len(feats)], atol=1e-6)
    assert sum(sizes) == 32 and max(sizes) > 1 and max(sizes) <= 16


def test_bad_input_fails_only_its_caller(model: KwsModel, feats: np.ndarray) -> None:
    batcher = MicroBatcher(max_batch_size=8, max_delay_ms=50)
    try:
        good = [batcher.submit(model, f) for f in feats[:3]]
        with pytest.raises(ModelMismatch, match="do not fit model"):
            batcher.submit(model, feats[0][:, :3])
        assert all(f.result(10).shape == (1, len(model.labels)) for f in good)
    finally:
        batcher.close()


def test_failed_batch_reaches_its_callers_only(model: KwsModel, served_model_path: Path, feats: np.ndarray) -> None:
    broken = BrokenModel(served_model_path)
    # Batches of 2 and a one-minute delay: the two broken-model rows share a batch whatever the timing.
    batcher = MicroBatcher(max_batch_size=2, max_delay_ms=60_000)
    try:
        poisoned = [batcher.submit(broken, np.full_like(feats[0], 123.0)), batcher.submit(broken, feats[1])]
        healthy = batcher.submit(model, feats[2:4])  # two rows: a full batch of its own
        for f in poisoned:
            with pytest.raises(RuntimeError, match="poisoned"):
                f.result(30)
        np.testing.assert_allclose(healthy.result(30), model.predict(feats[2:4]), atol=1e-6)
    finally:
        batcher.close()


def test_full_queue_is_overloaded_and_close_drains(model: KwsModel, feats: np.ndarray) -> None:
    batcher = MicroBatcher(max_batch_size=64, max_delay_ms=600_000, max_queue=2)
    queued = [batcher.submit(model, feats[0]), batcher.submit(model, feats[1])]
    with pytest.raises(Overloaded):
        batcher.submit(model, feats[2])
    batcher.close(timeout=60)  # does not wait the 10 min delay: closing runs queued work at once
    assert all(f.done() and f.result().shape == (1, len(model.labels)) for f in queued)
    with pytest.raises(Unavailable):
        batcher.submit(model, feats[0])


def test_core_with_batcher_matches_direct(model: KwsModel, clip_wavs: dict[str, bytes]) -> None:
    direct = InferenceCore({model.name: model}, model.name)
    batched = InferenceCore({model.name: model}, model.name, MicroBatcher(max_batch_size=4, max_delay_ms=1))
    try:
        for word, wav in clip_wavs.items():
            a, b = direct.predict_audio(*decode_wav(wav)), batched.predict_audio(*decode_wav(wav))
            np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
            assert model.labels[int(np.argmax(b.probabilities))] == word
    finally:
        batched.close()


def test_incoming_mode_waits_only_for_announced_requests(model: KwsModel, feats: np.ndarray) -> None:
    sizes: list[int] = []
    batcher = MicroBatcher(max_batch_size=16, max_delay_ms=60_000, wait_for="incoming",
                           on_batch=lambda _, n: sizes.append(n))
    try:
        # Nothing else announced: a lone request does not sit out the (one minute) delay.
        np.testing.assert_allclose(batcher.submit(model, feats[0]).result(30), model.predict(feats[0]), atol=1e-6)
        # Announced requests are waited for, so they share one batch.
        with batcher.incoming(len(feats)):
            futures = [batcher.submit(model, f) for f in feats]
        assert all(f.result(30).shape == (1, len(model.labels)) for f in futures)
    finally:
        batcher.close()
    assert sizes == [1, len(feats)]
