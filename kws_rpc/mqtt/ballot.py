"""The vote bookkeeping of cooperative inference, without MQTT: who is live, which clips wait for whom.

A clip is opened (before it is published) expecting every live worker, and decided once: when all of
them voted, when the ones still missing went OFFLINE or were dropped, or at its timeout. Until then
``pump`` hands the caller clips due for a republish (the first after ``retry_s``, then doubling), so a
clip or vote lost on the way (a broker restart, a QoS 0 vote) is asked for again; workers answer a
repeated request id from their cache.

Membership that cannot be gamed by accident:
- OFFLINE takes effect after ``offline_grace_s``: a broker that restarts fires every worker's last will,
  yet the workers are back within a second and still owe the clips they had.
- A worker with a retained ONLINE status that never votes (a ghost: its process died while the broker
  was down, or someone published the status by hand) is dropped, with a warning, once it has been
  silent for ``silence_s`` on clips it owes while other workers did vote. A vote brings it back.
- Votes from ids without a current ONLINE status are refused and counted; so are votes the caller
  found invalid (``reject``).

All waits sleep on one condition until the next event or the earliest deadline; the clock is
injectable, so tests drive time by hand.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
OK_REASONS = ("all voted", "worker offline", "worker dropped")


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
    expected: set[str]  # still awaited: shrinks when a worker goes OFFLINE or is dropped
    invited: frozenset[str] = frozenset()  # live when the clip was opened
    votes: dict[str, Vote] = dataclasses.field(default_factory=dict)
    decided_s: float | None = None
    reason: str = ""  # "all voted", "worker offline", "worker dropped", "timeout", "no live worker"
    publishes: int = 1
    retry_at_s: float = float("inf")
    excused: set[str] = dataclasses.field(default_factory=set)  # invited, but went OFFLINE or was dropped

    @property
    def missing(self) -> list[str]:
        """Workers live at opening that never voted (gone OFFLINE, dropped, timed out or lost)."""
        return sorted(self.invited - set(self.votes))

    @property
    def ok(self) -> bool:
        """Decided with a vote from every worker that stayed alive (and at least one vote)."""
        return self.reason in OK_REASONS and bool(self.votes)


class Ballot:
    def __init__(self, timeout_s: float, offline_grace_s: float = 0.0, retry_s: float = 1.0,
                 silence_s: float = 8.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.offline_grace_s = offline_grace_s
        self.retry_s = retry_s
        self.silence_s = silence_s
        self.clock = clock
        self.workers: dict[str, Any] = {}  # live worker id -> its status (whatever the caller passes)
        self.dropped: dict[str, Any] = {}  # silent workers, with their status; a vote brings them back
        self._gone: dict[str, float] = {}  # worker id -> when its OFFLINE takes effect
        self._heard: dict[str, float] = {}  # worker id -> last vote (or admission)
        self._last_vote_s = float("-inf")
        self._active_since = float("-inf")  # start of the current stretch of votes (after a quiet spell)
        self.clips: dict[str, Clip] = {}
        self._pending: collections.deque[Clip] = collections.deque()  # opened in order = deadline order
        self._cond = threading.Condition()
        self.decided = 0
        self.refused: collections.Counter[str] = collections.Counter()  # votes not counted, by reason

    # membership --------------------------------------------------------------------------------
    def worker_online(self, worker_id: str, status: Any = None) -> None:
        with self._cond:
            self.workers[worker_id] = status
            self.dropped.pop(worker_id, None)
            self._gone.pop(worker_id, None)  # back within the grace: still owes its votes
            self._heard[worker_id] = self.clock()
            self._cond.notify_all()

    def worker_offline(self, worker_id: str) -> None:
        """New clips stop expecting this worker now; undecided ones after the grace."""
        with self._cond:
            if worker_id not in self.workers and worker_id not in self.dropped:
                return
            self.workers.pop(worker_id, None)
            self.dropped.pop(worker_id, None)
            self._gone.setdefault(worker_id, self.clock() + self.offline_grace_s)
            self._drop_gone()
            self._cond.notify_all()

    def _excuse(self, worker_id: str, reason: str) -> None:
        for clip in self._pending:
            if clip.decided_s is None and worker_id in clip.expected and worker_id not in clip.votes:
                clip.expected.discard(worker_id)
                clip.excused.add(worker_id)
                self._maybe_decide(clip, reason)

    def _drop_gone(self) -> None:
        now = self.clock()
        for worker_id in [w for w, t in self._gone.items() if t <= now]:
            del self._gone[worker_id]
            self._excuse(worker_id, "worker offline")

    def _drop_silent(self) -> None:
        """Drops live workers that owe votes, sent none for silence_s, while others did vote."""
        now = self.clock()
        for worker_id in list(self.workers):
            oldest = next((c for c in self._pending if c.decided_s is None and worker_id in c.expected
                           and worker_id not in c.votes), None)
            if oldest is None:
                continue
            # Silence counts from the later of: its last vote, the oldest clip it owes, and the moment
            # votes resumed after a quiet spell (after an outage, the slowest to reconnect is not silent).
            since = max(self._heard.get(worker_id, oldest.opened_s), oldest.opened_s, self._active_since)
            if now - since >= self.silence_s and self._last_vote_s >= since:
                log.warning("worker %s sent no vote for %.1f s while others did: dropped (a stale retained "
                            "ONLINE status?); a vote from it brings it back", worker_id, now - since)
                self.dropped[worker_id] = self.workers.pop(worker_id)
                self._excuse(worker_id, "worker dropped")

    def settled(self) -> bool:
        """Some worker is live and none is within its OFFLINE grace (call with or without the lock)."""
        with self._cond:
            return bool(self.workers) and not self._gone

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
            self._pending.clear()
            self.decided = 0
            self.refused.clear()
            self._gone.clear()

    def open(self, request_id: str, index: int) -> Clip:
        """Call before publishing the clip, so an early vote finds it."""
        now = self.clock()
        with self._cond:
            # A worker within its OFFLINE grace is probably coming back (a broker restart): invited too.
            invited = frozenset(self.workers) | frozenset(self._gone)
            clip = Clip(request_id, index, now, now + self.timeout_s, set(invited), invited,
                        retry_at_s=now + self.retry_s)
            self.clips[request_id] = clip
            self._pending.append(clip)
            self._maybe_decide(clip, "no live worker")
            return clip

    def reject(self, reason: str) -> None:
        """Counts a vote the caller refused before it reached the ballot (unparsable, NaN, wrong length)."""
        with self._cond:
            self.refused[reason] += 1

    def vote(self, request_id: str, worker_id: str, model: str, probabilities: np.ndarray) -> bool:
        """Records a vote; False (and counted in ``refused``) if it came from an unknown worker, too late,
        twice, or for a clip this ballot does not know."""
        with self._cond:
            if worker_id in self.dropped:
                log.warning("worker %s voted again after it was dropped: back in", worker_id)
                self.workers[worker_id] = self.dropped.pop(worker_id)
            if worker_id not in self.workers and worker_id not in self._gone:
                self.refused["unknown worker"] += 1
                return False
            now = self.clock()
            if now - self._last_vote_s > self.silence_s:
                self._active_since = now
            self._heard[worker_id] = self._last_vote_s = now
            clip = self.clips.get(request_id)
            if clip is None:
                self.refused["unknown request"] += 1
                return False
            if worker_id in clip.votes:
                self.refused["duplicate"] += 1
                return False
            if clip.decided_s is not None:
                self.refused["late"] += 1
                return False
            clip.votes[worker_id] = Vote(worker_id, model, probabilities, self.clock())
            self._maybe_decide(clip, "all voted")
            return True

    def _maybe_decide(self, clip: Clip, reason: str) -> None:
        if clip.decided_s is None and clip.expected <= set(clip.votes):
            clip.decided_s, clip.reason = self.clock(), reason if clip.votes else "no live worker"
            self.decided += 1
            self._cond.notify_all()

    def _expire(self) -> list[Clip]:
        """Times out clips past their deadline; returns those due for a republish (and reschedules them)."""
        now = self.clock()
        while self._pending and self._pending[0].decided_s is not None:
            self._pending.popleft()
        due = []
        for clip in self._pending:
            if clip.decided_s is not None:
                continue
            if clip.deadline_s <= now:
                clip.decided_s, clip.reason = now, "timeout"
                self.decided += 1
            elif clip.retry_at_s <= now:
                clip.publishes += 1
                clip.retry_at_s = now + self.retry_s * 2 ** (clip.publishes - 1)
                due.append(clip)
        return due

    @property
    def undecided(self) -> int:
        with self._cond:
            return len(self.clips) - self.decided

    def pump(self, done: Callable[[], bool], timeout_s: float | None = None,
             progress: Callable[[int], None] | None = None) -> tuple[bool, list[Clip]]:
        """Blocks until ``done()`` (evaluated under the ballot's lock) holds, some clips are due for a
        republish, or timeout_s passes. Returns (done, clips to republish now)."""
        end = None if timeout_s is None else self.clock() + timeout_s
        with self._cond:
            while True:
                self._drop_gone()
                self._drop_silent()
                due = self._expire()
                if progress is not None:
                    progress(self.decided)
                if due or done():
                    return done(), due
                now = self.clock()
                if end is not None and now >= end:
                    return False, []
                self._cond.wait(max(0.0, self._next_wake(end) - now))

    def _next_wake(self, end: float | None) -> float:
        times = [min(c.deadline_s, c.retry_at_s) for c in self._pending if c.decided_s is None]
        times += list(self._gone.values())
        if self.workers and any(c.decided_s is None for c in self._pending):
            times.append(self.clock() + max(self.silence_s / 4, 0.05))  # re-check silent workers
        if end is not None:
            times.append(end)
        return min(times, default=self.clock() + 1.0)

    def wait(self, total: int, timeout_s: float | None = None,
             progress: Callable[[int], None] | None = None) -> bool:
        """Blocks until total clips are decided (True) or timeout_s passes (False), without republishing
        (for callers that have no transport, such as tests)."""
        end = None if timeout_s is None else self.clock() + timeout_s
        while True:
            left = None if end is None else max(0.0, end - self.clock())
            finished, _ = self.pump(lambda: self.decided >= total, left, progress)
            if finished or (end is not None and self.clock() >= end):
                return finished
