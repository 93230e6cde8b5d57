"""Turns a cooperative run (a decided Ballot) into accuracies and the JSON report. Transport-free."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kws_rpc import ensemble
from kws_rpc.mqtt.ballot import Clip


def clip_votes(clips: Sequence[Clip]) -> list[np.ndarray]:
    """Per clip a (K, C) vote array, in worker-id order; (0, C) where nobody voted."""
    width = next((len(v.probabilities) for c in clips for v in c.votes.values()), 0)
    return [np.stack([c.votes[w].probabilities for w in sorted(c.votes)]) if c.votes
            else np.zeros((0, width), np.float32) for c in clips]


def per_model_accuracy(clips: Sequence[Clip], labels: Sequence[int]) -> dict[str, dict[str, float]]:
    """Accuracy of each model over the clips it voted on (keyed by model name; workers of the same
    model are pooled)."""
    hits: dict[str, list[bool]] = {}
    for clip, y in zip(clips, labels):
        for v in clip.votes.values():
            hits.setdefault(v.model, []).append(int(np.argmax(v.probabilities)) == int(y))
    return {m: {"accuracy": float(np.mean(h)), "votes": len(h)} for m, h in sorted(hits.items())}


def summarize(clips: Sequence[Clip], labels: Sequence[int], names: Sequence[str], label_names: Sequence[str],
              policy: str) -> dict[str, Any]:
    """Accuracy of every policy, per model, missing votes, and one record per clip."""
    votes = clip_votes(clips)
    decisions = {p: ensemble.decide_all(p, votes) for p in ensemble.POLICIES}
    expected_votes = sum(len(c.invited | set(c.votes)) for c in clips)
    received = sum(len(c.votes) for c in clips)
    per_clip = [{
        "request_id": c.request_id, "name": n, "label": label_names[int(y)],
        "decided": label_names[int(decisions[policy][i])] if decisions[policy][i] >= 0 else None,
        "reason": c.reason, "missing": c.missing,
        "latency_ms": round(1000 * ((c.decided_s or c.opened_s) - c.opened_s), 2),
        "votes": {w: {"model": v.model, "label": label_names[int(np.argmax(v.probabilities))],
                      "probabilities": [round(float(p), 5) for p in v.probabilities]}
                  for w, v in sorted(c.votes.items())},
    } for i, (c, y, n) in enumerate(zip(clips, labels, names))]
    y = np.asarray(labels)
    return {
        "policy": policy,
        "accuracy": float(np.mean(decisions[policy] == y)) if len(y) else float("nan"),
        "per_policy_accuracy": {p: float(np.mean(d == y)) for p, d in decisions.items()},
        "per_model_accuracy": per_model_accuracy(clips, labels),
        "clips": len(clips),
        "votes_expected": expected_votes,
        "votes_received": received,
        "missing_predictions": expected_votes - received,
        "clips_without_votes": sum(1 for v in votes if len(v) == 0),
        "decided_by": {r: sum(1 for c in clips if c.reason == r) for r in sorted({c.reason for c in clips})},
        "per_clip": per_clip,
    }
