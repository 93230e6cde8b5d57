"""Ensemble policies on hand-made votes chosen so that the policies disagree: each test fails if a policy
is swapped for another or its tie-break is dropped."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kws_rpc.lab import ensemble_fit
from kws_rpc.model import ensemble


def v(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


# Two unsure models say 0, one confident model says 1: majority and mean say 0, margin-weighting says 1.
SPLIT = v([0.6, 0.4, 0.0], [0.6, 0.4, 0.0], [0.3, 0.6, 0.1])


def test_log_mean_lets_a_sure_no_veto() -> None:
    # mean: label 0 (0.55 vs 0.45); log_mean: the third model all but rules 0 out, so label 1
    votes = v([0.9, 0.1], [0.75, 0.25], [0.0, 1.0])
    assert ensemble.mean(votes) == 0 and ensemble.majority(votes) == 0
    assert ensemble.log_mean(votes) == 1


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
    assert ensemble_fit.accuracy("mean", clips, [0, 0, 1]) == pytest.approx(2 / 3)


def test_choose_policy_on_val() -> None:
    clips = [SPLIT, v([0.1, 0.9, 0.0])]
    best, scores = ensemble_fit.choose_policy(clips, [1, 1])
    assert best == "margin_weighted"
    assert scores == {"majority": 0.5, "mean": 0.5, "log_mean": 0.5, "margin_weighted": 1.0}
    # a tie: the earlier (simpler) policy wins
    best, _ = ensemble_fit.choose_policy([v([0.1, 0.9, 0.0])], [1])
    assert best == "majority"


def test_stack_models_and_unknown_policy() -> None:
    a, b = np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)[::-1]
    clips = ensemble_fit.stack_models([a, b])
    assert len(clips) == 3 and clips[0].shape == (2, 3)
    assert clips[0].tolist() == [[1, 0, 0], [0, 0, 1]]
    with pytest.raises(ValueError):
        ensemble.decide("median", a)


def test_correct_by_policy_scores_each_policy_and_weighting() -> None:
    # one clip, SPLIT's votes (label 1 is right): majority and mean miss it, margin-weighting gets it;
    # a weighting that trusts only the third member gets it, one that trusts only the first does not
    probs = {m: SPLIT[i][None] for i, m in enumerate("abc")}
    only = {m: ensemble.Weights({m: 1.0}, "prob") for m in "ac"}
    got = ensemble_fit.correct_by_policy(list("abc"), probs, [1], only)
    assert list(got) == [*ensemble.POLICIES, "a", "c"]
    assert not got["majority"][0] and not got["mean"][0] and got["margin_weighted"][0]
    assert not got["a"][0] and got["c"][0]


# --- the fitted combiner ---------------------------------------------------------------------------------

def synthetic(n: int, seed: int, noise_members: int = 1, labels: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """probs (n, 2 + noise_members, labels): two informative members (right ~80 % and ~70 %), then pure
    noise (Dirichlet draws that know nothing of the label)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, labels, n)
    out = []
    for skill in (2.5, 1.8):
        logits = rng.normal(0, 1, (n, labels))
        logits[np.arange(n), y] += skill
        out.append(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    for _ in range(noise_members):
        out.append(rng.dirichlet(np.full(labels, 0.3), n))
    return np.stack(out, axis=1), y


@pytest.mark.parametrize("space", ensemble.SPACES)
def test_fit_gives_a_noise_member_no_weight(space: str) -> None:
    probs, y = synthetic(800, seed=3)
    w = ensemble_fit.fit_weights(probs, y, ["good", "fair", "noise"], space)
    assert sum(w.weights.values()) == pytest.approx(1.0)
    assert all(x >= 0 for x in w.weights.values())
    assert w.weights["noise"] < 0.03, w.weights
    assert w.weights["good"] > w.weights["fair"] > 0.05, w.weights
    # the fitted NLL is no worse than any corner or the uniform weights
    m = np.ones(probs.shape[:2], bool)
    for cand in ([1, 0, 0], [0, 1, 0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0]):
        assert w.fitted["nll"] <= ensemble_fit.nll(probs, m, y, np.array(cand), space)[0] + 1e-9


def test_weighted_policy_beats_mean_with_a_noise_member_out_of_fold() -> None:
    probs, y = synthetic(800, seed=5, noise_members=2)
    names = ["good", "fair", "noise1", "noise2"]
    clips, members = list(probs), [names] * len(y)
    res = ensemble_fit.cross_fit(clips, y, members, folds=5, seed=0)
    oof = res["oof_accuracy"]
    assert set(oof) == set(ensemble.ALL_POLICIES)
    assert oof["weighted"] > oof["mean"] + 0.02, oof
    assert len(res["weighted"]["log"]["fold_weights"]) == 5
    best, scores = ensemble_fit.choose_policy(clips, y, members)
    assert best == "weighted" and scores == oof


def test_weighted_renormalizes_over_the_members_that_voted() -> None:
    w = ensemble.Weights({"a": 0.7, "b": 0.2, "c": 0.1}, space="prob")
    votes = v([0.9, 0.1], [0.0, 1.0], [0.0, 1.0])
    assert ensemble.decide("weighted", votes, ["a", "b", "c"], w) == 0  # 0.63 against 0.07 + 0.2 + 0.1
    assert ensemble.mean(votes) == ensemble.majority(votes) == 1
    # a's vote lost: b and c decide, whatever their absolute weights
    assert ensemble.decide("weighted", votes[1:], ["b", "c"], w) == 1
    assert w.of(["b", "c"]).tolist() == pytest.approx([2 / 3, 1 / 3])
    # the order of the rows does not matter, only who cast them
    assert ensemble.decide("weighted", votes[::-1], ["c", "b", "a"], w) == 0
    # an unknown model counts 0 next to known ones; alone, it decides
    assert ensemble.decide("weighted", v([0.0, 1.0], [0.9, 0.1]), ["zz", "a"], w) == 0
    assert ensemble.decide("weighted", v([0.0, 1.0]), ["zz"], w) == 1
    assert ensemble.decide("weighted", np.zeros((0, 2)), [], w) == ensemble.NO_DECISION
    # two workers serving b share b's weight: a (0.7) still outweighs them
    assert w.of(["a", "b", "b"]).tolist() == pytest.approx([0.7 / 0.9, 0.1 / 0.9, 0.1 / 0.9])
    assert ensemble.decide("weighted", v([0.9, 0.1], [0.0, 1.0], [0.0, 1.0]), ["a", "b", "b"], w) == 0
    with pytest.raises(ValueError):
        ensemble.decide("weighted", votes)  # no names, no weights
    with pytest.raises(ValueError):
        ensemble.decide("weighted", votes, ["a", "b"], w)


def test_fit_with_missing_votes_and_weights_round_trip(tmp_path) -> None:
    probs, y = synthetic(400, seed=7)
    names = ["good", "fair", "noise"]
    rng = np.random.default_rng(0)
    keep = rng.random((400, 3)) > 0.2
    keep[:, 0] |= ~keep.any(1)  # every clip has a vote
    clips = [probs[i][keep[i]] for i in range(400)]
    members = [[n for n, k in zip(names, keep[i]) if k] for i in range(400)]
    p, m, got = ensemble_fit.dense(clips, members, names)
    assert got == names and (m == keep).all() and np.allclose(p[keep], probs[keep])
    w = ensemble_fit.fit_weights(p, y, names, "log", m)
    assert w.weights["noise"] < 0.05
    acc = ensemble_fit.accuracy("weighted", clips, y, members, w)
    assert acc >= ensemble_fit.accuracy("mean", clips, y)
    manifest = tmp_path / "ensemble.json"
    manifest.write_text(json.dumps({"members": names, "weighted": w.as_dict()}))
    back = ensemble.load_weights(manifest)
    assert back is not None and back.space == "log" and back.weights == pytest.approx(w.weights, abs=1e-6)
    assert ensemble.load_weights(tmp_path / "none.json") is None
    with pytest.raises(ValueError):
        ensemble.Weights({"a": -0.1, "b": 1.1})


def test_shipped_manifest_weights_name_its_members() -> None:
    from pathlib import Path

    manifest = Path(__file__).resolve().parent.parent / "models" / "ensemble.json"
    w = ensemble.load_weights(manifest)
    if w is None:
        pytest.skip("no fitted weights in models/ensemble.json")
    members = json.loads(manifest.read_text())["members"]
    assert set(w.weights) == set(members) and sum(w.weights.values()) == pytest.approx(1.0, abs=1e-5)
    # Never fitted on the members' in-sample train predictions: on val (out of sample for members trained on
    # train), or on out-of-fold votes over train+val (trainers.stack), then for these very member files.
    assert w.fitted["split"] == "val" or w.fitted["split"].startswith("train+val out of fold")
    if w.fitted["split"] != "val":
        from kws_rpc.lab.predictions import file_sha256

        models = manifest.parent
        assert w.fitted["members_sha256"] == {m: file_sha256(models / f"{m}.tflite") for m in members}
        assert w.fitted["oof_choice"] in ensemble.ALL_POLICIES
