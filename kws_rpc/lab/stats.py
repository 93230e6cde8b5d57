"""Paired comparisons of classifiers on the same clips, and the spread of a figure over training seeds.
Numpy and the standard library only.

With 800 test clips one clip is 0.125 points, so a difference of a point or two between two models may
be a handful of clips: report it with a paired test against the model it replaces.

- ``mcnemar``: the exact two-sided McNemar test. Only the discordant clips count: b = clips model A gets
  right and B wrong, c = the reverse. Under "A and B are equally accurate" each discordant clip is a fair
  coin, so p = P(|b - c| at least this large) under Binomial(b + c, 1/2).
- ``paired_bootstrap``: a seeded percentile CI of accuracy(A) - accuracy(B), resampling clips (both
  models' answers on a clip stay together).
- ``spread``: mean, sample std, min and max of a figure over seeds.
- ``pair_test`` (both of the above for one pair) and ``overlap`` (where two models' errors coincide), as
  the comparison and the stacking report them; ``pct`` and ``fmt_p`` print them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class McNemar:
    b: int  # A right, B wrong
    c: int  # A wrong, B right
    p: float  # exact two-sided p-value

    def as_dict(self) -> dict[str, float]:
        return {"b": self.b, "c": self.c, "p": self.p}


def binomial_two_sided_p(b: int, c: int) -> float:
    """Exact two-sided p of b successes in n = b + c fair coin flips: 2 * P(X <= min(b, c)), capped at 1."""
    if b < 0 or c < 0:
        raise ValueError(f"counts must be non-negative, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1))  # exact integers: no underflow for large n
    return min(1.0, 2 * tail / 2**n)  # int / int is correctly rounded, even for n in the thousands


def mcnemar(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray) -> McNemar:
    """Exact McNemar test of two models' per-clip correctness on the same clips."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two equal 1-d arrays of per-clip correctness, got {a.shape} and {b.shape}")
    nb, nc = int(np.sum(a & ~b)), int(np.sum(~a & b))
    return McNemar(nb, nc, binomial_two_sided_p(nb, nc))


@dataclasses.dataclass(frozen=True)
class BootstrapCI:
    diff: float  # accuracy(A) - accuracy(B) on the clips as given
    low: float
    high: float
    level: float
    resamples: int
    seed: int

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def paired_bootstrap(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray,
                     resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> BootstrapCI:
    """Percentile CI of accuracy(A) - accuracy(B), resampling clips with replacement (seeded)."""
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need two equal non-empty 1-d arrays, got {a.shape} and {b.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = a - b
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for start in range(0, resamples, 1000):  # bounded memory: 1000 x N indices at a time
        k = min(1000, resamples - start)
        idx = rng.integers(0, len(d), size=(k, len(d)))
        diffs[start : start + k] = d[idx].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return BootstrapCI(float(d.mean()), float(low), float(high), level, resamples, seed)


def spread(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Mean, sample standard deviation (ddof=1; 0 for one value), min, max and count over seeds."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError("need a non-empty list of values")
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": len(v)}


def pair_test(correct: np.ndarray, ref: np.ndarray, resamples: int, seed: int) -> dict[str, Any]:
    m = mcnemar(correct, ref)
    ci = paired_bootstrap(correct, ref, resamples=resamples, seed=seed)
    return {"b": m.b, "c": m.c, "p": m.p, "diff": ci.diff, "ci95": [ci.low, ci.high]}


def overlap(correct: dict[str, np.ndarray]) -> dict[str, dict[str, dict[str, Any]]]:
    """For each ordered pair (A, B): clips both get wrong, and the share of A's errors B gets right."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for a, ca in correct.items():
        out[a] = {}
        for b, cb in correct.items():
            wrong_a = ~ca
            n = int(wrong_a.sum())
            out[a][b] = {"both_wrong": int((wrong_a & ~cb).sum()), "a_errors": n,
                         "b_right_on_a_errors": int((wrong_a & cb).sum()),
                         "share_b_right": float((wrong_a & cb).sum() / n) if n else float("nan")}
    return out


# How figures are printed in the lab's reports.
def pct(x: float) -> str:
    return f"{100 * x:7.3f}%"


def fmt_p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"
