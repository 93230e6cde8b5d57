"""Per-clip records of a cascade run, the summary the assignment asks for, and the JSON report."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.transports import OVER_BUDGET

MB = float(1 << 20)


@dataclasses.dataclass(frozen=True)
class ClipRecord:
    name: str
    true_label: str
    little_label: str
    margin: float
    asked: bool
    big_label: str | None  # None when not asked or when the remote call failed
    final_label: str
    bytes_sent: int
    little_ms: float  # read + decode + pad + features + little inference
    remote_ms: float  # whole ask(), retries included; 0 when not asked
    attempts: int = 0
    error: str = ""


def summarize(records: Sequence[ClipRecord]) -> dict[str, Any]:
    """Accuracy and cost as the reference counts them: cost = bytes of big requests, in MB of 2^20."""
    n = len(records)
    over = [r for r in records if r.asked and r.error == OVER_BUDGET]
    asked = [r for r in records if r.asked and r.error != OVER_BUDGET]
    return {
        "clips": n,
        "accuracy": sum(r.final_label == r.true_label for r in records) / n if n else 0.0,
        "little_accuracy": sum(r.little_label == r.true_label for r in records) / n if n else 0.0,
        "cost_mb": sum(r.bytes_sent for r in records) / MB,
        "calls": len(asked),
        "failures": sum(r.big_label is None for r in asked),
        "over_budget": len(over),
        "mean_little_ms": sum(r.little_ms for r in records) / n if n else 0.0,
        "mean_remote_ms": sum(r.remote_ms for r in asked) / len(asked) if asked else 0.0,
    }


def headline(summary: dict[str, Any]) -> str:
    """The two lines in the reference's exact format."""
    return (f"Accuracy: {100 * summary['accuracy']:.3f}%\n"
            f"Communication Cost: {summary['cost_mb']:.3f} MB")


def write_report(path: Path, records: Sequence[ClipRecord], summary: dict[str, Any],
                 run: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"run": run, "summary": summary, "clips": [dataclasses.asdict(r) for r in records]}
    path.write_text(json.dumps(doc, indent=1) + "\n")


REFERENCE_POINTS = (("reference cascade", 0.93125, 0.245), ("reference best", 0.94625, 2.835))


LABELLED_THRESHOLDS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


def plot_sweep(path: Path, rows: Sequence[dict[str, Any]], split: str, calibrated: float | None,
               little_only: dict[str, Any], big_only: dict[str, Any], cost_of: str = "rest-spec") -> None:
    """Accuracy against communication cost, one point per threshold, with the reference points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs, ys = [r["cost_mb"] for r in rows], [100 * r["accuracy"] for r in rows]
    ax.plot(xs, ys, "o-", ms=3, label=f"this cascade ({split})")
    for r in rows:
        if r["threshold"] in LABELLED_THRESHOLDS:
            ax.annotate(f"{r['threshold']:g}", (r["cost_mb"], 100 * r["accuracy"]), fontsize=7,
                        textcoords="offset points", xytext=(3, -9))
    # The reference's figures are costs of its REST body: comparable only on that axis.
    references = REFERENCE_POINTS if cost_of == "rest-spec" else ()
    for name, acc, mb in references:
        ax.plot([mb], [100 * acc], "*", ms=12, label=f"{name}: {100 * acc:.3f}% @ {mb} MB")
    if calibrated is not None:
        c = next(r for r in rows if r["threshold"] == calibrated)
        ax.plot([c["cost_mb"]], [100 * c["accuracy"]], "s", ms=9, mfc="none", mew=2,
                label=f"calibrated on val (t={calibrated:.3f}): {100 * c['accuracy']:.3f}% @ {c['cost_mb']:.3f} MB")
    ax.axhline(100 * little_only["accuracy"], ls=":", c="gray", label="little only")
    ax.axhline(100 * big_only["accuracy"], ls="--", c="gray", label="big on every clip")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlim(0, 1.4 * max([*xs, *(mb for _, _, mb in references)]))
    ax.set_xlabel(f"communication cost (MB of {cost_of} requests)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Big/Little cascade: accuracy vs cost over margin thresholds ({split} split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
