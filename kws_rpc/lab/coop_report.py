"""Turns a cooperative run (a decided Ballot) into accuracies and the JSON report. Transport-free."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kws_rpc.model import ensemble
from kws_rpc.mqtt.ballot import Clip
from kws_rpc.mqtt.coop import Run
from kws_rpc.mqtt.payloads import senml_prediction_reference, senml_reference


def clip_votes(clips: Sequence[Clip]) -> list[np.ndarray]:
    """Per clip a (K, C) vote array, in worker-id order; (0, C) where nobody voted."""
    width = next((len(v.probabilities) for c in clips for v in c.votes.values()), 0)
    return [np.stack([c.votes[w].probabilities for w in sorted(c.votes)]) if c.votes
            else np.zeros((0, width), np.float32) for c in clips]


def clip_members(clips: Sequence[Clip]) -> list[list[str]]:
    """Per clip the model name behind each row of clip_votes (same worker-id order): the fitted
    "weighted" policy weighs a vote by who cast it."""
    return [[c.votes[w].model for w in sorted(c.votes)] for c in clips]


def per_model_accuracy(clips: Sequence[Clip], labels: Sequence[int]) -> dict[str, dict[str, float]]:
    """Accuracy of each model over the clips it voted on (keyed by model name; workers of the same
    model are pooled)."""
    hits: dict[str, list[bool]] = {}
    for clip, y in zip(clips, labels):
        for v in clip.votes.values():
            hits.setdefault(v.model, []).append(int(np.argmax(v.probabilities)) == int(y))
    return {m: {"accuracy": float(np.mean(h)), "votes": len(h)} for m, h in sorted(hits.items())}


def summarize(clips: Sequence[Clip], labels: Sequence[int], names: Sequence[str], label_names: Sequence[str],
              policy: str, weights: ensemble.Weights | None = None) -> dict[str, Any]:
    """Accuracy of every policy (the fitted "weighted" one when its weights are given), per model,
    missing votes, and one record per clip."""
    votes = clip_votes(clips)
    decisions = {p: ensemble.decide_all(p, votes) for p in ensemble.POLICIES}
    if weights is not None:
        decisions["weighted"] = ensemble.decide_all("weighted", votes, clip_members(clips), weights)
    if policy not in decisions:
        raise ValueError(f"policy {policy!r} is not one of {sorted(decisions)} (the weighted one needs weights)")
    # A worker that went OFFLINE or was dropped as silent is excused: its missing votes are counted
    # apart, not as lost.
    expected_votes = sum(len((c.invited - c.excused) | set(c.votes)) for c in clips)
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
        "excused_predictions": sum(len(c.excused - set(c.votes)) for c in clips),
        "republished_clips": sum(1 for c in clips if c.publishes > 1),
        "lost": sum(1 for c in clips if not c.ok),
        "clips_without_votes": sum(1 for v in votes if len(v) == 0),
        "decided_by": {r: sum(1 for c in clips if c.reason == r) for r in sorted({c.reason for c in clips})},
        "per_clip": per_clip,
    }


def report(run: Run, labels: Sequence[int], names: Sequence[str], label_names: Sequence[str],
           policy: str, weights: ensemble.Weights | None = None) -> dict[str, Any]:
    """The run's accuracies (every policy, every model), missing votes, timings and message sizes."""
    clips = [run.ballot.clips[rid] for rid in run.request_ids]
    out = summarize(clips, labels, names, label_names, policy, weights)
    first = next((c for c in clips if c.votes), None)
    vote = next(iter(first.votes.values())) if first else None
    feats = np.zeros(run.feature_shape, np.float32) if run.feature_shape else None
    out.update({
        "payload": run.payload_kind,
        "end_to_end_s": round(run.end_to_end_s, 4), "preprocess_s": round(run.preprocess_s, 4),
        "published_to_decided_s": round(run.published_to_decided_s, 4),
        "publish_s": round(run.publish_s, 4),
        "messages": len(clips) + out["votes_received"],
        "messages_per_s": round((len(clips) + out["votes_received"]) / max(run.end_to_end_s, 1e-9), 1),
        "clips_per_s": round(len(clips) / max(run.end_to_end_s, 1e-9), 1),
        "bytes_per_clip_message": round(float(np.mean(run.clip_bytes)), 1) if run.clip_bytes else 0,
        "bytes_per_prediction_message": round(float(np.mean(run.vote_bytes)), 1) if run.vote_bytes else 0,
        "late_votes": run.ballot.refused["late"], "duplicate_votes": run.ballot.refused["duplicate"],
        "foreign_votes": run.ballot.refused["unknown request"],
        "refused_votes": dict(sorted(run.ballot.refused.items())),
        "dropped_workers": sorted(run.ballot.dropped),
    })
    if feats is not None:
        out["senml_json_base64_f32_clip_bytes"] = len(senml_reference(run.request_ids[0], feats))
    if vote is not None:
        out["senml_json_prediction_bytes"] = len(senml_prediction_reference(
            run.request_ids[0], vote.probabilities, vote.model, vote.worker_id, list(label_names)))
    return out
