"""TensorFlow for tests, in a child process, so the test process keeps the runtime users run.

kws_rpc.model.interpreter picks tf.lite as soon as ``tensorflow`` is in sys.modules. One TensorFlow import in the
pytest process would make every later test run the models through tf.lite instead of ai_edge_litert, the
interpreter the edge and the server use. A test that needs TensorFlow hands that part to
``TfChild.run(fn, *args)``: ``fn`` (a module-level function, imported by name in the child) runs in one
long-lived ``sys.executable`` child, started with "spawn" (the test process runs gRPC threads, which do
not survive a fork), and its return value or exception, with the child's traceback, comes back to the
test. TensorFlow is imported once per session, in the child; the assertions stay in the test.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

T = TypeVar("T")


def tensorflow_installed() -> bool:
    """True if TensorFlow can be imported, found without importing it."""
    return importlib.util.find_spec("tensorflow") is not None


def _quiet() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # as trainers/__init__.py, whoever imports TF first


class TfChild:
    """One child process for TensorFlow work, started on first use; restarted after a crash or timeout."""

    def __init__(self, timeout_s: float = 540.0) -> None:
        self.timeout_s = timeout_s
        self._pool: ProcessPoolExecutor | None = None
        self._pid: int | None = None

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_quiet)
            self._pid = self._pool.submit(os.getpid).result(120)
        try:
            return self._pool.submit(fn, *args, **kwargs).result(self.timeout_s)
        except (BrokenProcessPool, TimeoutError):
            self.close(kill=True)
            raise

    def close(self, kill: bool = False) -> None:
        pool, pid, self._pool, self._pid = self._pool, self._pid, None, None
        if pool is None:
            return
        if kill and pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pool.shutdown(wait=not kill, cancel_futures=True)
