"""Ensemble policies on hand-made votes chosen so that the policies disagree: each test fails if a policy
is swapped for another or its tie-break is dropped."""

from __future__ import annotations

import numpy as np
import pytest

from kws_rpc import ensemble


def v(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


# Two unsure models say 0, one confident model says 1: majority and mean say 0, margin-weighting says 1.
SPLIT = v([0.6, 0.4, 0.0], [0.6, 0.4, 0.0], [0.3, 0.6, 0.1])


def test_majority_ignores_confidence() -> None:
    votes = v([0.4, 0.35, 0.25], [0.4, 0.35, 0.25], [0.0, 0.01, 0.99])
    assert ensemble.majority(votes) == 0
    assert ensemble.mean(votes) == 2  # the confident dissenter wins the mean


def test_majority_tie_goes_to_larger_summed_probability() -> None:
    # one vote each for 0 and 2; label 2 has the larger summed probability (0.9 + 0.35 vs 0.6 + 0.05)
    votes = v([0.6, 0.0, 0.35, 0.05], [0.05, 0.0, 0.9, 0.05])
    assert ensemble.majority(votes) == 2
    # a tie between labels 1 and 3 (the first in index order would be 1)
    votes = v([0.1, 0.5, 0.0, 0.4], [0.0, 0.2, 0.0, 0.8])
    assert ensemble.majority(votes) == 3


def test_mean_and_margin_weighted_disagree_where_margins_differ() -> None:
    assert ensemble.mean(SPLIT) == 0
    assert ensemble.majority(SPLIT) == 0
    assert ensemble.margin_weighted(SPLIT) == 1


def test_margin_weighted_with_all_zero_margins_is_the_mean() -> None:
    votes = v([0.5, 0.5, 0.0], [0.1, 0.45, 0.45])
    assert ensemble.margin_weighted(votes) == ensemble.mean(votes) == 1


def test_single_vote_and_no_vote() -> None:
    for name in ensemble.POLICIES:
        assert ensemble.decide(name, v([0.1, 0.2, 0.7])) == 2
        assert ensemble.decide(name, np.zeros((0, 3))) == ensemble.NO_DECISION


def test_accuracy_counts_undecided_as_wrong() -> None:
    clips = [v([0.9, 0.1]), np.zeros((0, 2)), v([0.2, 0.8])]
    assert ensemble.accuracy("mean", clips, [0, 0, 1]) == pytest.approx(2 / 3)


def test_choose_policy_on_val() -> None:
    clips = [SPLIT, v([0.1, 0.9, 0.0])]
    best, scores = ensemble.choose_policy(clips, [1, 1])
    assert best == "margin_weighted" and scores == {"majority": 0.5, "mean": 0.5, "margin_weighted": 1.0}
    # a tie: the earlier (simpler) policy wins
    best, _ = ensemble.choose_policy([v([0.1, 0.9, 0.0])], [1])
    assert best == "majority"


def test_stack_models_and_unknown_policy() -> None:
    a, b = np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)[::-1]
    clips = ensemble.stack_models([a, b])
    assert len(clips) == 3 and clips[0].shape == (2, 3)
    assert clips[0].tolist() == [[1, 0, 0], [0, 0, 1]]
    with pytest.raises(ValueError):
        ensemble.decide("median", a)
