"""Dynamic micro-batching: concurrent single-clip requests share one ``KwsModel.predict`` call.

A TFLite invoke on a batch of 16 costs far less than 16 invokes of one, so under concurrency the
server groups waiting requests for the same model. A worker takes the oldest waiting request, waits at
most ``max_delay_ms`` (counted from that request's arrival) for up to ``max_batch_size`` rows, runs
them as one batch and hands each caller its rows through a ``concurrent.futures.Future``. Transport-free.

With ``wait_for="incoming"`` (what the server uses) the worker waits only while requests announced with
``incoming()`` are still being decoded on their way in: a lone client never waits for companions that
are not coming, and under load the batch still gathers every request already in the server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import numpy as np

from kws_rpc.errors import Overloaded, Unavailable
from kws_rpc.model.kws_model import KwsModel

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Item:
    feats: np.ndarray  # (rows, frames, coeffs), already checked against the model
    future: Future
    arrived: float  # time.monotonic()


class MicroBatcher:
    """Queues feature requests per model and runs them in batches on ``workers`` threads.

    ``on_batch(model_name, rows)`` is called after every batch (metrics hook; must not raise).
    """

    def __init__(self, max_batch_size: int = 32, max_delay_ms: float = 2.0, workers: int = 1,
                 max_queue: int = 1024, on_batch: Callable[[str, int], None] | None = None,
                 wait_for: str = "delay") -> None:
        if max_batch_size < 1 or workers < 1 or max_queue < 1 or max_delay_ms < 0:
            raise ValueError("need max_batch_size >= 1, workers >= 1, max_queue >= 1, max_delay_ms >= 0")
        if wait_for not in ("delay", "incoming"):
            raise ValueError(f"wait_for must be 'delay' (always wait max_delay_ms) or 'incoming', not {wait_for!r}")
        self.wait_for = wait_for
        self._incoming = 0
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._cond = threading.Condition()
        self._pending: OrderedDict[KwsModel, deque[_Item]] = OrderedDict()
        self._queued = 0
        self._closed = False
        self._threads = [threading.Thread(target=self._run, name=f"kws-batcher-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, model: KwsModel, feats: np.ndarray) -> Future:
        """Queues features (frames, coeffs) or (rows, frames, coeffs); the future gives (rows, labels).

        Bad features fail here, in the caller's thread, so they never spoil a batch of others.
        """
        x = model.check_features(feats)
        item = _Item(x, Future(), time.monotonic())
        with self._cond:
            if self._closed:
                raise Unavailable("the server is shutting down; retry on another instance")
            if self._queued >= self.max_queue:
                raise Overloaded(f"{self._queued} requests are already waiting; retry with backoff")
            self._pending.setdefault(model, deque()).append(item)
            self._queued += 1
            self._cond.notify_all()
        return item.future

    @contextlib.contextmanager
    def incoming(self, n: int = 1) -> Iterator[None]:
        """Announces ``n`` requests being prepared (decoded, featurized) that will be submitted inside
        this block: with ``wait_for="incoming"``, a due batch waits for them, up to its delay."""
        with self._cond:
            self._incoming += n
        try:
            yield
        finally:
            with self._cond:
                self._incoming -= n
                self._cond.notify_all()

    def _companions_due(self) -> bool:
        return self.wait_for == "delay" or self._incoming > 0

    def predict(self, model: KwsModel, feats: np.ndarray, timeout: float | None = None) -> np.ndarray:
        """Blocking convenience: submit and wait."""
        return self.submit(model, feats).result(timeout)

    @property
    def queued(self) -> int:
        return self._queued

    def close(self, timeout: float | None = None) -> None:
        """Refuses new work, runs everything already queued at once, then stops the workers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)

    def _take(self) -> tuple[KwsModel, list[_Item]] | None:
        """Blocks until a batch is due; returns None when closed and drained."""
        with self._cond:
            while True:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return None
                model = min(self._pending, key=lambda m: self._pending[m][0].arrived)
                queue = self._pending[model]
                deadline = queue[0].arrived + self.max_delay
                while (not self._closed and sum(len(i.feats) for i in queue) < self.max_batch_size
                       and self._companions_due() and (left := deadline - time.monotonic()) > 0):
                    self._cond.wait(left)
                    if self._pending.get(model) is not queue:
                        break  # another worker took this group meanwhile
                if self._pending.get(model) is not queue:
                    continue
                items, rows = [], 0
                while queue and (not items or rows + len(queue[0].feats) <= self.max_batch_size):
                    items.append(queue.popleft())
                    rows += len(items[-1].feats)
                if not queue:
                    del self._pending[model]
                self._queued -= len(items)
                return model, items

    def _run(self) -> None:
        while (job := self._take()) is not None:
            model, items = job
            items = [i for i in items if i.future.set_running_or_notify_cancel()]
            if not items:
                continue
            try:
                probs = model.predict(np.concatenate([i.feats for i in items]))
            except Exception as e:  # noqa: BLE001 - every caller of the batch must learn why it failed
                log.exception("batch of %d for model %s failed", len(items), model.name)
                for i in items:
                    i.future.set_exception(e)
                continue
            start = 0
            for i in items:
                i.future.set_result(probs[start : start + len(i.feats)])
                start += len(i.feats)
            if self._on_batch is not None:
                self._on_batch(model.name, start)
