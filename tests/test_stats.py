"""kws_rpc.lab.stats against values computed independently (scipy.stats.binomtest gives the same p-values)."""

from __future__ import annotations

import numpy as np
import pytest

from kws_rpc.lab import stats


def pairs(b: int, c: int, both_right: int = 0, both_wrong: int = 0) -> tuple[np.ndarray, np.ndarray]:
    a = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    bb = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    return np.array(a), np.array(bb)


@pytest.mark.parametrize("b,c,p", [
    (32, 15, 0.018623836615006),  # scipy.stats.binomtest(15, 47).pvalue
    (15, 32, 0.018623836615006),  # symmetric
    (0, 5, 0.0625),  # 2 / 2**5
    (0, 1, 1.0),
    (7, 7, 1.0),
    (0, 0, 1.0),
    (450, 600, 4.111890930721e-06),  # scipy.stats.binomtest(450, 1050).pvalue
    (3, 10, 0.09228515625),  # 2 * (1 + 13 + 78 + 286) / 2**13
])
def test_mcnemar_exact_p(b: int, c: int, p: float) -> None:
    r = stats.mcnemar(*pairs(b, c, both_right=700, both_wrong=20))
    assert (r.b, r.c) == (b, c)
    assert r.p == pytest.approx(p, rel=1e-9)


def test_mcnemar_ignores_concordant_clips_and_checks_shapes() -> None:
    assert stats.mcnemar(*pairs(32, 15)).p == stats.mcnemar(*pairs(32, 15, 500, 100)).p
    with pytest.raises(ValueError):
        stats.mcnemar([True, False], [True])
    with pytest.raises(ValueError):
        stats.binomial_two_sided_p(-1, 3)


def test_paired_bootstrap_is_seeded_and_covers_the_difference() -> None:
    a, b = pairs(32, 15, both_right=700, both_wrong=53)  # 800 clips, A is 17 clips (2.125 points) better
    r1 = stats.paired_bootstrap(a, b, resamples=4000, seed=1)
    r2 = stats.paired_bootstrap(a, b, resamples=4000, seed=1)
    assert r1 == r2
    assert r1.diff == pytest.approx(17 / 800)
    assert r1.low < r1.diff < r1.high
    # McNemar says p = 0.019: the 95 % CI excludes 0, but not by much
    assert 0 < r1.low < 0.01 and 0.03 < r1.high < 0.04
    same = stats.paired_bootstrap(*pairs(10, 10, 780), resamples=2000)
    assert same.diff == 0 and same.low < 0 < same.high
    ident = stats.paired_bootstrap(*pairs(0, 0, 790, 10), resamples=500)
    assert ident.low == ident.high == 0.0


def test_spread_over_seeds() -> None:
    s = stats.spread([0.97, 0.9725, 0.975])
    assert s["mean"] == pytest.approx(0.9725)
    assert s["std"] == pytest.approx(0.0025)  # sample std (ddof=1)
    assert (s["min"], s["max"], s["n"]) == (0.97, 0.975, 3)
    assert stats.spread([0.5])["std"] == 0.0
    with pytest.raises(ValueError):
        stats.spread([])
