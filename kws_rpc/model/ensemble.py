"""Ensemble policies: how the votes of several models on one clip become one label. Pure numpy.

A clip's votes are a (K, C) array: K models' probability vectors over C labels; K may be smaller than the
ensemble (a worker died, a vote was lost) and may be 0 (no decision: -1).

The policies in ``POLICIES`` have nothing fitted. ``weighted`` (in ``FITTED_POLICIES``) has one weight per
member, so it needs to know who cast each vote (``members``: one model name per row) and ``Weights``: non-
negative weights summing to 1, pooling members' log-probabilities (a weighted geometric pool) or
probabilities (a weighted mean). A missing member's weight is left out and the others renormalized, as
``mean`` averages over whoever voted. The weights and the choice of policy are fitted offline, on
out-of-sample votes (``kws_rpc.lab.ensemble_fit``), and stored in models/ensemble.json.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

NO_DECISION = -1
LOG_FLOOR = 1e-6  # log-probabilities are taken of max(p, LOG_FLOOR): int8 softmax outputs can be exactly 0
SPACES = ("log", "prob")


def _as_votes(votes: np.ndarray) -> np.ndarray:
    v = np.asarray(votes, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"votes must be (models, labels), got shape {v.shape}")
    return v


def mean(votes: np.ndarray) -> int:
    """Argmax of the mean probability: confident models count more, wrong-but-unsure ones less."""
    v = _as_votes(votes)
    return NO_DECISION if len(v) == 0 else int(np.argmax(v.mean(axis=0)))


def log_mean(votes: np.ndarray) -> int:
    """Argmax of the mean log-probability (a geometric pool): one model sure a label is wrong vetoes it."""
    v = _as_votes(votes)
    return NO_DECISION if len(v) == 0 else int(np.argmax(np.log(np.maximum(v, LOG_FLOOR)).mean(axis=0)))


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
    "majority": majority, "mean": mean, "log_mean": log_mean, "margin_weighted": margin_weighted}
FITTED_POLICIES = ("weighted",)
ALL_POLICIES = (*POLICIES, *FITTED_POLICIES)


# --- the fitted combiner -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Weights:
    """One non-negative weight per member (by model name), summing to 1, and the space they pool in."""

    weights: dict[str, float]
    space: str = "log"
    fitted: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)  # how: split, clips, ...

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {self.space!r}")
        w = np.array(list(self.weights.values()), dtype=np.float64)
        if not len(w) or np.any(~np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
            raise ValueError(f"weights must be non-negative and not all zero, got {self.weights}")

    def of(self, members: Sequence[str]) -> np.ndarray:
        """The weights of these voters, renormalized over them; a member without a weight counts 0, and
        two workers serving one model share its weight. If no voter has a weight (say, only an unknown
        model voted), every voter counts the same."""
        count = collections.Counter(members)  # replicas of one model share its weight
        w = np.array([self.weights.get(m, 0.0) / count[m] for m in members], dtype=np.float64)
        if len(w) and not w.sum() > 0:
            w = np.ones(len(w))
        return w / w.sum() if len(w) else w

    @property
    def out_of_fold(self) -> bool:
        """Fitted on out-of-fold votes over train+val (trainers.stack), not on val's clips alone."""
        return str(self.fitted.get("split", "")).startswith("train+val")

    def as_dict(self) -> dict[str, Any]:
        return {"weights": {k: round(float(v), 6) for k, v in self.weights.items()}, "space": self.space,
                "fitted": self.fitted}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Weights:
        return cls({str(k): float(v) for k, v in d["weights"].items()}, d.get("space", "log"), d.get("fitted", {}))


def load_weights(manifest: str | Path) -> Weights | None:
    """The fitted weights in an ensemble manifest (models/ensemble.json: "weighted"), or None."""
    p = Path(manifest)
    if not p.is_file():
        return None
    d = json.loads(p.read_text()).get("weighted")
    return Weights.from_dict(d) if d else None


def pool(probs: np.ndarray, w: np.ndarray, space: str) -> np.ndarray:
    """Combined scores (..., C) of probs (..., K, C) with row weights w (..., K) summing to 1."""
    if space == "log":
        return np.einsum("...k,...kc->...c", w, np.log(np.maximum(probs, LOG_FLOOR)))
    return np.einsum("...k,...kc->...c", w, probs)


def weighted(votes: np.ndarray, members: Sequence[str], weights: Weights) -> int:
    """Argmax of the weighted pool of the voters' (log-)probabilities, weights renormalized over them."""
    v = _as_votes(votes)
    if len(v) == 0:
        return NO_DECISION
    if len(members) != len(v):
        raise ValueError(f"{len(v)} votes but {len(members)} member names")
    return int(np.argmax(pool(v, weights.of(members), weights.space)))


def decide(policy: str, votes: np.ndarray, members: Sequence[str] | None = None,
           weights: Weights | None = None) -> int:
    if policy in FITTED_POLICIES:
        if members is None or weights is None:
            raise ValueError(f"policy {policy!r} needs the voters' names and fitted weights")
        return weighted(votes, members, weights)
    try:
        return POLICIES[policy](votes)
    except KeyError:
        raise ValueError(f"unknown policy {policy!r}; choose from {list(ALL_POLICIES)}") from None


def decide_all(policy: str, clips: Sequence[np.ndarray], members: Sequence[Sequence[str]] | None = None,
               weights: Weights | None = None) -> np.ndarray:
    """One decision per clip (NO_DECISION where a clip has no vote); ``members``: the voters of each clip."""
    if members is None:
        return np.array([decide(policy, v, None, weights) for v in clips], dtype=np.int64)
    if len(members) != len(clips):
        raise ValueError(f"{len(clips)} clips but {len(members)} lists of voters")
    return np.array([decide(policy, v, m, weights) for v, m in zip(clips, members)], dtype=np.int64)
