"""Ensemble policies: how the votes of several models on one clip become one label. Pure numpy.

A clip's votes are a (K, C) array: K models' probability vectors over C labels; K may be smaller than the
ensemble (a worker died, a vote was lost) and may be 0 (no decision: -1). The policy is chosen on the
validation split with ``choose_policy`` and only then reported on test, so the test split never picks it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

NO_DECISION = -1


def _as_votes(votes: np.ndarray) -> np.ndarray:
    v = np.asarray(votes, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"votes must be (models, labels), got shape {v.shape}")
    return v


def mean(votes: np.ndarray) -> int:
    """Argmax of the mean probability: confident models count more, wrong-but-unsure ones less."""
    v = _as_votes(votes)
    return NO_DECISION if len(v) == 0 else int(np.argmax(v.mean(axis=0)))


def majority(votes: np.ndarray) -> int:
    """Most top-1 votes; a tie between labels goes to the one with the larger summed probability."""
    v = _as_votes(votes)
    if len(v) == 0:
        return NO_DECISION
    counts = np.bincount(v.argmax(axis=1), minlength=v.shape[1])
    tied = np.flatnonzero(counts == counts.max())
    return int(tied[np.argmax(v[:, tied].sum(axis=0))])


def margin_weighted(votes: np.ndarray) -> int:
    """Each model's probabilities weighted by its own top-1 minus top-2 margin, so a model torn between
    two labels says little; if every margin is zero this is the mean."""
    v = _as_votes(votes)
    if len(v) == 0:
        return NO_DECISION
    if v.shape[1] < 2:
        return 0
    top2 = np.sort(v, axis=1)[:, -2:]
    w = top2[:, 1] - top2[:, 0]
    if not np.any(w > 0):
        return mean(v)
    return int(np.argmax((w[:, None] * v).sum(axis=0)))


POLICIES: dict[str, Callable[[np.ndarray], int]] = {
    "majority": majority, "mean": mean, "margin_weighted": margin_weighted}


def decide(policy: str, votes: np.ndarray) -> int:
    try:
        return POLICIES[policy](votes)
    except KeyError:
        raise ValueError(f"unknown policy {policy!r}; choose from {sorted(POLICIES)}") from None


def decide_all(policy: str, clips: Sequence[np.ndarray]) -> np.ndarray:
    """One decision per clip (NO_DECISION where a clip has no vote)."""
    return np.array([decide(policy, v) for v in clips], dtype=np.int64)


def accuracy(policy: str, clips: Sequence[np.ndarray], labels: Sequence[int]) -> float:
    """Fraction of clips decided correctly; an undecided clip counts as wrong."""
    if len(clips) != len(labels):
        raise ValueError(f"{len(clips)} clips but {len(labels)} labels")
    if len(clips) == 0:
        return float("nan")
    return float(np.mean(decide_all(policy, clips) == np.asarray(labels)))


def score_policies(clips: Sequence[np.ndarray], labels: Sequence[int]) -> dict[str, float]:
    return {name: accuracy(name, clips, labels) for name in POLICIES}


def choose_policy(val_clips: Sequence[np.ndarray], val_labels: Sequence[int]) -> tuple[str, dict[str, float]]:
    """The policy with the best validation accuracy; ties go to the earlier (simpler) one in POLICIES."""
    scores = score_policies(val_clips, val_labels)
    best = max(POLICIES, key=lambda name: (scores[name], -list(POLICIES).index(name)))
    return best, scores


def stack_models(per_model: Sequence[np.ndarray]) -> list[np.ndarray]:
    """[(N, C)] * K arrays of K models -> N per-clip (K, C) vote arrays (the offline ensemble)."""
    arr = np.stack([np.asarray(p) for p in per_model], axis=1)
    return list(arr)
