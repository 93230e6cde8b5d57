"""Native thread pools: one BLAS thread per process in servers, workers and clients.

numpy's OpenBLAS starts a thread per core and lets them spin after each matrix product; the mel
filterbank product of kws_rpc.audio.features is small, so the spinning costs more CPU than the product
(about 2 ms per request in the server; in the coop client, part of 1.6 s of CPU for 800 clips).
Processes that serve or stream call ``pin_native_threads()`` once at start; training does not.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)
_limits: object | None = None  # kept alive: threadpoolctl restores the old limits when it is collected


SWITCH_INTERVAL_S = 0.0005


def responsive_network_thread() -> None:
    """A paho network thread answers the broker only when it holds the GIL; with CPython's default
    switch interval (5 ms) an inference or preprocessing thread keeps it waiting up to 5 ms per QoS 2
    step (PUBREC, PUBCOMP), and the broker stops at its in-flight limit meanwhile. 0.5 ms lets it in."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def pin_native_threads(n: int = 1) -> None:
    global _limits
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.warning("threadpoolctl is not installed: numpy's BLAS threads are not pinned (set OPENBLAS_NUM_THREADS=1)")
        return
    _limits = threadpool_limits(limits=n, user_api="blas")
