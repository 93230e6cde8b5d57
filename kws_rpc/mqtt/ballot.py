"""Collects votes per clip and decides when a clip is complete. Transport-free and thread-safe: the MQTT
network thread calls ``vote``/``worker_online``/``worker_offline``; the caller's thread blocks in ``wait``.

A clip expects one vote from every worker live when it was opened. It is decided when all of those have
voted, when the missing ones have gone OFFLINE, or when its own deadline passes: ``wait`` sleeps on a
condition until the next event or the earliest deadline, so nothing polls for the last clip.

OFFLINE takes effect after ``offline_grace_s``: a broker that restarts fires every worker's last will,
yet the workers are back within a second and, thanks to their persistent sessions, still answer the
clips they owe. A worker that really died costs its undecided clips the grace, not their timeout.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Vote:
    worker_id: str
    model: str
    probabilities: np.ndarray
    at_s: float  # clock time of arrival


@dataclasses.dataclass
class Clip:
    request_id: str
    index: int
    opened_s: float
    deadline_s: float
    expected: set[str]  # still awaited: shrinks when a worker goes OFFLINE
    invited: frozenset[str] = frozenset()  # live when the clip was opened
    votes: dict[str, Vote] = dataclasses.field(default_factory=dict)
    decided_s: float | None = None
    reason: str = ""  # "all voted", "worker offline", "timeout"

    @property
    def missing(self) -> list[str]:
        """Workers live at opening that never voted (gone OFFLINE, timed out or lost)."""
        return sorted(self.invited - set(self.votes))


class Ballot:
    def __init__(self, timeout_s: float, offline_grace_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.offline_grace_s = offline_grace_s
        self._gone: dict[str, float] = {}  # worker id -> when its OFFLINE takes effect
        self.clock = clock
        self.workers: dict[str, Any] = {}  # live worker id -> its status (whatever the caller passes)
        self.clips: dict[str, Clip] = {}
        self._by_deadline: collections.deque[Clip] = collections.deque()  # opened in order = deadline order
        self._cond = threading.Condition()
        self.decided = 0
        self.late_votes = 0  # after the clip was decided
        self.duplicate_votes = 0
        self.foreign_votes = 0  # unknown request id (another run, another client)

    # membership --------------------------------------------------------------------------------
    def worker_online(self, worker_id: str, status: Any = None) -> None:
        with self._cond:
            self.workers[worker_id] = status
            self._gone.pop(worker_id, None)  # back within the grace: still owes its votes
            self._cond.notify_all()

    def worker_offline(self, worker_id: str) -> None:
        """New clips stop expecting this worker now; undecided ones after the grace."""
        with self._cond:
            self.workers.pop(worker_id, None)
            self._gone.setdefault(worker_id, self.clock() + self.offline_grace_s)
            self._drop_gone()
            self._cond.notify_all()

    def _drop_gone(self) -> None:
        now = self.clock()
        for worker_id in [w for w, t in self._gone.items() if t <= now]:
            del self._gone[worker_id]
            for clip in self.clips.values():
                if clip.decided_s is None and worker_id in clip.expected and worker_id not in clip.votes:
                    clip.expected.discard(worker_id)
                    self._maybe_decide(clip, "worker offline")

    def live(self) -> dict[str, Any]:
        with self._cond:
            return dict(self.workers)

    def wait_for_workers(self, count: int, timeout_s: float) -> dict[str, Any]:
        """Blocks until at least count workers are live or timeout_s passes; returns who is live."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.workers) >= count, timeout_s)
            return dict(self.workers)

    # clips and votes ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Forgets every clip and counter, keeps the live workers: one ballot per run."""
        with self._cond:
            self.clips.clear()
            self._by_deadline.clear()
            self.decided = self.late_votes = self.duplicate_votes = self.foreign_votes = 0
            self._gone.clear()

    def open(self, request_id: str, index: int) -> Clip:
        """Call before publishing the clip, so an early vote finds it."""
        now = self.clock()
        with self._cond:
            clip = Clip(request_id, index, now, now + self.timeout_s, set(self.workers), frozenset(self.workers))
            self.clips[request_id] = clip
            self._by_deadline.append(clip)
            self._maybe_decide(clip, "no live worker")
            return clip

    def vote(self, request_id: str, worker_id: str, model: str, probabilities: np.ndarray) -> bool:
        """Records a vote; False if it came too late, twice, or for a clip this ballot does not know."""
        with self._cond:
            clip = self.clips.get(request_id)
            if clip is None:
                self.foreign_votes += 1
                return False
            if clip.decided_s is not None:
                self.late_votes += 1
                return False
            if worker_id in clip.votes:
                self.duplicate_votes += 1
                return False
            clip.votes[worker_id] = Vote(worker_id, model, probabilities, self.clock())
            self._maybe_decide(clip, "all voted")
            return True

    def _maybe_decide(self, clip: Clip, reason: str) -> None:
        if clip.decided_s is None and clip.expected <= set(clip.votes):
            clip.decided_s, clip.reason = self.clock(), reason
            self.decided += 1
            self._cond.notify_all()

    def _expire(self) -> None:
        now = self.clock()
        while self._by_deadline and (self._by_deadline[0].decided_s is not None
                                     or self._by_deadline[0].deadline_s <= now):
            clip = self._by_deadline.popleft()
            if clip.decided_s is None:
                clip.decided_s, clip.reason = now, "timeout"
                self.decided += 1

    def wait(self, total: int, timeout_s: float | None = None,
             progress: Callable[[int], None] | None = None) -> bool:
        """Blocks until total clips are decided (True) or timeout_s passes (False); progress(n) is told
        the decided count whenever it grows."""
        end = None if timeout_s is None else self.clock() + timeout_s
        seen = -1
        with self._cond:
            while True:
                self._drop_gone()
                self._expire()
                if self.decided != seen:
                    seen = self.decided
                    if progress is not None:
                        progress(seen)
                if self.decided >= total:
                    return True
                wake = [t for t in (end, self._by_deadline[0].deadline_s if self._by_deadline else None,
                                    min(self._gone.values(), default=None)) if t is not None]
                now = self.clock()
                if end is not None and now >= end:
                    return False
                self._cond.wait(max(0.0, min(wake) - now) if wake else None)
