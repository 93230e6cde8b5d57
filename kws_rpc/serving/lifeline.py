"""A child process that stops when its supervisor dies, however the supervisor dies.

A supervisor stopped by SIGTERM stops its children itself; one killed by SIGKILL (the OOM killer, a crash)
cannot, and its children would serve on as orphans. On Linux the kernel sends the child a signal when its
parent dies (prctl PR_SET_PDEATHSIG); elsewhere a thread notices the parent change. Either way the child
gets SIGTERM, which its own handler turns into a graceful stop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading

log = logging.getLogger(__name__)

ENV = "KWS_SUPERVISOR_PID"  # set by the supervisor in its children's environment
PR_SET_PDEATHSIG = 1


def supervisor_pid() -> int | None:
    """The supervisor's pid when this process is one of its children, else None."""
    value = os.environ.get(ENV)
    return int(value) if value and value.isdigit() else None


def _pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def follow(parent: int, poll_s: float = 0.5) -> None:
    """SIGTERM this process when ``parent`` is gone. Call it after the SIGTERM handler is installed."""
    if not _pdeathsig(signal.SIGTERM):
        def watch() -> None:
            while os.getppid() == parent:
                threading.Event().wait(poll_s)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="kws-lifeline", daemon=True).start()
    if os.getppid() != parent:  # it died before the kernel was told to warn us
        log.error("the supervisor (pid %d) is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)
