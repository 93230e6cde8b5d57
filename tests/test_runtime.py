"""The tests run models on the interpreter users run: ai_edge_litert, never tf.lite (see tests/conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kws_rpc.model.kws_model import KwsModel


def test_models_load_on_ai_edge_litert(little_path: Path) -> None:
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    m = KwsModel(little_path)
    assert m.predict(m.features(np.zeros(16000, np.float32))).shape == (1, len(m.labels))
    with m._interpreter(1) as (interp, _, _):
        assert type(interp) is litert.Interpreter
    assert "tensorflow" not in sys.modules


def test_interpreters_are_pooled_and_bounded(little_path: Path) -> None:
    """64 threads calling one model create at most max_interpreters interpreters, and every answer is
    the one a single thread gets (an interpreter is never shared by two calls at once)."""
    import threading

    m = KwsModel(little_path, max_interpreters=2)
    x = np.random.default_rng(0).normal(size=(64, *m.feature_config.shape)).astype(np.float32) * 3 - 5
    expected = np.concatenate([m.predict(row) for row in x])
    got = np.zeros_like(expected)
    start = threading.Barrier(64)

    def call(i: int) -> None:
        start.wait()
        for _ in range(5):
            got[i] = m.predict(x[i])[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m._created == {1: 2}
    np.testing.assert_array_equal(got, expected)


def test_serving_process_features_do_not_fault_pages_in() -> None:
    """A serving process keeps freed heap: one clip's features (about 0.7 MB of arrays allocated and freed)
    no longer fault their pages in on every call, which cost half their CPU. Run in a child, since the
    setting is process-wide."""
    import subprocess
    import textwrap

    child = textwrap.dedent("""
        import resource, sys
        import numpy as np
        from kws_rpc.audio.features import FeatureConfig, log_mel
        from kws_rpc.model.native import keep_freed_heap
        cfg, x = FeatureConfig(num_mfcc=0), np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
        def faults_per_call():
            for _ in range(20):
                log_mel(x, cfg)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(200):
                log_mel(x, cfg)
            return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 200
        untuned = faults_per_call()
        assert keep_freed_heap(), "mallopt refused"
        print(untuned, faults_per_call())
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout
    untuned, tuned = map(float, out.split())
    assert tuned < 2, f"{tuned} page faults per clip with the heap kept (untuned: {untuned})"
