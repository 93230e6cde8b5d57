"""bench.bench_codec_variants (a benchmark: not part of the edge install, so not in the edge-only test run)."""

from __future__ import annotations

import numpy as np

from bench import bench_codec_variants as v
from kws_rpc.wire import featcodec
from test_codec import _log_mel_like  # the same log-mel-like surface as the codec's own tests


def test_codec_variants_bench_reproduces_the_shipped_codec_at_its_defaults() -> None:
    """bench.bench_codec_variants scores quantizer variants against the shipped codec: its baseline row
    (round 0.5, offset 0, coarser steps when capped) must be exactly what the server decodes."""
    x = _log_mel_like(3)
    for cap in (10_000, 150):  # uncapped, and a clip made to take coarser steps
        y, size = v.code(x, featcodec.DEFAULT_STEP_INDEX, 0.5, 0.0, "coarser", cap)
        data = featcodec.encode(x, max_bytes=cap)
        assert size == len(data) and np.allclose(y, featcodec.decode(data, x.shape), atol=1e-5)
    truncated, size = v.code(x, featcodec.DEFAULT_STEP_INDEX, 0.5, 0.0, "truncated", 150)
    assert size <= 150 and not np.allclose(truncated, y, atol=1e-3)  # another rule, within the same cap
    toward_zero, _ = v.code(x, featcodec.DEFAULT_STEP_INDEX, 0.5, 0.3, "coarser", 10_000)
    assert not np.allclose(toward_zero, v.code(x, featcodec.DEFAULT_STEP_INDEX, 0.5, 0.0, "coarser", 10_000)[0])
