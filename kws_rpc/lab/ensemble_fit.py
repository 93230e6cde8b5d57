"""Fitting the ensemble offline: which policy, and the ``weighted`` policy's weights, from votes whose
labels are known. The policies themselves (what runs) are ``kws_rpc.model.ensemble``.

``fit_weights`` finds non-negative weights summing to 1 that minimize the negative log-likelihood of the
combined vote, in whichever pooling space ``cross_fit`` finds better out of fold; ``choose_policy`` takes
the best policy by validation accuracy, ``weighted`` scored out of fold.

Out-of-sample predictions, honestly: the members were trained on the train split, so their train
predictions are in-sample (near 100 %) and must not be used to fit a combiner; their val predictions
are out-of-sample. ``cross_fit`` estimates each policy's accuracy by k-fold cross-fitting over the val
clips (fit on k-1 folds, decide the held-out fold), and the policy is chosen on those out-of-fold (OOF)
accuracies; the weights then used are fitted on all val clips. True k-fold over train+val retrains
every member k times on k-1 folds of train+val, for out-of-fold predictions of all 7,200 clips:
``trainers.kfold`` does that (about 80 min on 2 cores for k = 3), and ``trainers.stack`` runs
``cross_fit`` and ``fit_weights`` on those votes instead of val's 800.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kws_rpc.model.ensemble import ALL_POLICIES, NO_DECISION, POLICIES, SPACES, Weights, decide_all, pool


def accuracy(policy: str, clips: Sequence[np.ndarray], labels: Sequence[int],
             members: Sequence[Sequence[str]] | None = None, weights: Weights | None = None) -> float:
    """Fraction of clips decided correctly; an undecided clip counts as wrong."""
    if len(clips) != len(labels):
        raise ValueError(f"{len(clips)} clips but {len(labels)} labels")
    if len(clips) == 0:
        return float("nan")
    return float(np.mean(decide_all(policy, clips, members, weights) == np.asarray(labels)))


def score_policies(clips: Sequence[np.ndarray], labels: Sequence[int]) -> dict[str, float]:
    return {name: accuracy(name, clips, labels) for name in POLICIES}


def dense(clips: Sequence[np.ndarray], members: Sequence[Sequence[str]],
          names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-clip votes with voter names -> probs (N, K, C), mask (N, K) of who voted, member names (K)."""
    names = list(names) if names is not None else sorted({m for ms in members for m in ms})
    width = next((np.shape(c)[1] for c in clips if len(c)), 0)
    probs = np.zeros((len(clips), len(names), width))
    mask = np.zeros((len(clips), len(names)), dtype=bool)
    index = {m: k for k, m in enumerate(names)}
    for i, (c, ms) in enumerate(zip(clips, members)):
        for row, m in zip(np.asarray(c, dtype=np.float64), ms):
            if m in index:  # a model outside ``names`` is not fitted
                probs[i, index[m]] = row
                mask[i, index[m]] = True
    return probs, mask, names


def nll(probs: np.ndarray, mask: np.ndarray, labels: np.ndarray, w: np.ndarray, space: str) -> np.ndarray:
    """Mean negative log-likelihood of the pooled vote for each candidate weight vector in w (G, K) or (K,).
    Each clip renormalizes the weights over the members that voted on it."""
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    wm = w[:, None, :] * mask[None]  # (G, N, K)
    total = wm.sum(-1, keepdims=True)
    wm = np.where(total > 0, wm / np.where(total > 0, total, 1), mask[None] / np.maximum(mask.sum(-1), 1)[None, :, None])
    pooled = pool(probs[None], wm, space)  # (G, N, C)
    if space == "log":
        z = pooled - pooled.max(-1, keepdims=True)
        logq = z - np.log(np.exp(z).sum(-1, keepdims=True))
    else:
        logq = np.log(np.maximum(pooled / np.maximum(pooled.sum(-1, keepdims=True), 1e-300), 1e-300))
    return -logq[:, np.arange(len(labels)), labels].mean(-1)


def _simplex_grid(k: int, steps: int) -> np.ndarray:
    """Every weight vector of k non-negative multiples of 1/steps summing to 1."""
    def compositions(parts: int, total: int) -> list[tuple[int, ...]]:
        if parts == 1:
            return [(total,)]
        return [(i, *rest) for i in range(total + 1) for rest in compositions(parts - 1, total - i)]

    return np.array(compositions(k, steps), dtype=np.float64) / steps


def fit_weights(probs: np.ndarray, labels: Sequence[int], names: Sequence[str], space: str = "log",
                mask: np.ndarray | None = None, grid_steps: int = 10) -> Weights:
    """Non-negative weights summing to 1 that minimize the pooled vote's mean NLL on (probs, labels).

    probs (N, K, C), mask (N, K) of who voted (default: all). A coarse grid over the simplex (steps of
    1/grid_steps) finds the basin; then mass moves between pairs of members in shrinking steps (down
    to 0.001) while that lowers the NLL. Both objectives are convex in w when every member votes, so
    this finds the minimum to about 0.001 per weight."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if p.ndim != 3 or len(p) != len(y) or p.shape[1] != len(names):
        raise ValueError(f"probs must be (clips, members, labels) with one name per member, got {p.shape}")
    m = np.ones(p.shape[:2], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    k = p.shape[1]
    grid = _simplex_grid(k, grid_steps)
    losses = np.concatenate([nll(p, m, y, grid[i : i + 256], space) for i in range(0, len(grid), 256)])
    w, best = grid[int(np.argmin(losses))].copy(), float(losses.min())
    pairs = [(i, j) for i in range(k) for j in range(k) if i != j]
    for delta in (0.05, 0.02, 0.01, 0.005, 0.002, 0.001):
        for _ in range(1000):
            cands = []
            for i, j in pairs:
                step = min(delta, w[i])
                if step > 0:
                    c = w.copy()
                    c[i] -= step
                    c[j] += step
                    cands.append(c)
            if not cands:
                break
            cl = nll(p, m, y, np.array(cands), space)
            if cl.min() >= best - 1e-12:
                break
            w, best = cands[int(np.argmin(cl))], float(cl.min())
    w = np.maximum(w, 0)
    w = w / w.sum()
    return Weights({n: float(x) for n, x in zip(names, w)}, space,
                   {"nll": best, "clips": len(y), "objective": f"mean NLL of the {space}-pooled vote"})


def cross_fit(clips: Sequence[np.ndarray], labels: Sequence[int], members: Sequence[Sequence[str]],
              folds: int = 5, seed: int = 0, spaces: Sequence[str] = SPACES,
              keep_predictions: bool = False) -> dict[str, Any]:
    """Out-of-fold accuracy of every policy on these (out-of-sample) clips, by k-fold cross-fitting.

    The unfitted policies have nothing to fit: their OOF accuracy is their accuracy. ``weighted`` is
    fitted on k-1 folds and decides the held-out fold, once per pooling space; its score is that of the
    space with the better OOF accuracy (ties: lower OOF NLL). Returns the scores, per-space details
    (OOF accuracy, OOF NLL, each fold's weights; with ``keep_predictions`` also each clip's cross-fitted
    decision, for paired tests) and the chosen space.

    Pass out-of-sample votes only: the val split for members trained on train, or the out-of-fold votes
    over train+val of members retrained per fold (trainers.kfold, trainers.stack)."""
    y = np.asarray(labels, dtype=np.int64)
    n = len(y)
    if len(clips) != n or len(members) != n:
        raise ValueError(f"{len(clips)} clips, {len(members)} voter lists, {n} labels")
    if n < folds:
        raise ValueError(f"{n} clips cannot make {folds} folds")
    probs, mask, names = dense(clips, members)
    order = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(order, folds)
    scores = {name: accuracy(name, clips, y) for name in POLICIES}
    detail: dict[str, Any] = {}
    for space in spaces:
        pred = np.full(n, NO_DECISION)
        losses = np.zeros(n)
        fold_weights = []
        for held in parts:
            train = np.setdiff1d(order, held)
            w = fit_weights(probs[train], y[train], names, space, mask[train])
            fold_weights.append({k: round(v, 4) for k, v in w.weights.items()})
            pred[held] = decide_all("weighted", [clips[i] for i in held], [members[i] for i in held], w)
            for i in held:
                losses[i] = nll(probs[i : i + 1], mask[i : i + 1], y[i : i + 1], w.of(names), space)[0]
        detail[space] = {"oof_accuracy": float(np.mean(pred == y)), "oof_nll": float(losses.mean()),
                         "fold_weights": fold_weights, **({"predictions": pred} if keep_predictions else {})}
    space = max(spaces, key=lambda s: (detail[s]["oof_accuracy"], -detail[s]["oof_nll"]))
    scores["weighted"] = detail[space]["oof_accuracy"]
    return {"folds": folds, "seed": seed, "clips": n, "members": names, "oof_accuracy": scores,
            "weighted": detail, "space": space}


def choose_policy(val_clips: Sequence[np.ndarray], val_labels: Sequence[int],
                  members: Sequence[Sequence[str]] | None = None, folds: int = 5,
                  seed: int = 0) -> tuple[str, dict[str, float]]:
    """The policy with the best validation accuracy; ties go to the earlier (simpler) one in
    ALL_POLICIES. With the voters' names (``members``), ``weighted`` competes too, scored by its k-fold
    out-of-fold accuracy (``cross_fit``), never by weights fitted on the clips they are scored on."""
    if members is None:
        scores = score_policies(val_clips, val_labels)
    else:
        scores = cross_fit(val_clips, val_labels, members, folds, seed)["oof_accuracy"]
    return best_policy(scores), scores


def best_policy(scores: dict[str, float]) -> str:
    """The best-scored policy; ties go to the earlier (simpler) one in ALL_POLICIES."""
    names = [p for p in ALL_POLICIES if p in scores]
    return max(names, key=lambda name: (scores[name], -names.index(name)))


def stack_models(per_model: Sequence[np.ndarray]) -> list[np.ndarray]:
    """[(N, C)] * K arrays of K models -> N per-clip (K, C) vote arrays (the offline ensemble)."""
    arr = np.stack([np.asarray(p) for p in per_model], axis=1)
    return list(arr)


def correct_by_policy(members: Sequence[str], probs: dict[str, np.ndarray], labels: Sequence[int],
                      weightings: dict[str, Weights] | None = None) -> dict[str, np.ndarray]:
    """The offline ensemble of ``members`` (every one votes on every clip; ``probs[m]`` is (N, C)): per
    fixed policy, then per named weighting (decided by the weighted policy), whether each clip is right."""
    clips = stack_models([probs[m] for m in members])
    voters = [list(members)] * len(clips)
    y = np.asarray(labels)
    out = {policy: decide_all(policy, clips, voters) == y for policy in POLICIES}
    for name, w in (weightings or {}).items():
        out[name] = decide_all("weighted", clips, voters, w) == y
    return out
