"""Shared by the benchmarks: latency summaries, a plain-text table and a JSON results file that says
where and when the numbers were measured (so they can be compared later)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

# Where benchmarks write by default (gitignored); the committed figures in bench/results/ are refreshed
# only by an explicit --out (the Makefile's *-commit targets).
RESULTS = Path(__file__).resolve().parent.parent / "results"


BIN = Path(sys.executable).parent  # the venv's console scripts (kws-server, kws-edge): what a user runs


def shown(path: str | Path) -> str:
    """A path as results record it: relative to the working directory when under it (no machine's absolute
    paths in committed files), else as given."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def wait_ready(url: str, proc: Any = None, timeout_s: float = 120.0) -> None:
    """Until ``url`` answers 200; fails at once if ``proc`` (a Popen) has exited."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} never answered 200")


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds (NaN when nothing was measured)."""
    if not seconds:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}
    ms = np.asarray(seconds) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(ms.mean())}


def environment() -> dict[str, Any]:
    return {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def write_results(path: str | Path, payload: dict[str, Any]) -> Path:
    """Writes {"environment": ..., **payload} as indented JSON, creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"environment": environment(), **payload}, indent=2) + "\n")
    return path


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], min_width: int = 0) -> str:
    """Right-aligned text table; floats with 1 decimal. A fixed ``min_width`` lets rows printed one
    at a time (progress) line up with a header printed before."""
    def cell(v: Any) -> str:
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([min_width, len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (a supervisor and its server processes, say)."""
    ps = psutil.Process(pid)
    return [ps, *ps.children(recursive=True)]


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process and its descendants so far."""
    total = 0.0
    for p in process_tree(pid):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def tree_rss_mb(pid: int) -> float:
    total = 0
    for p in process_tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20
