"""Native thread pools: one BLAS thread per process in servers, workers and clients.

numpy's OpenBLAS starts a thread per core and lets them spin after each matrix product; the mel
filterbank product of kws_rpc.features is small, so the spinning costs more CPU than the product
(about 2 ms per request in the server; in the coop client, part of 1.6 s of CPU for 800 clips).
Processes that serve or stream call ``pin_native_threads()`` once at start; training does not.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
_limits: object | None = None  # kept alive: threadpoolctl restores the old limits when it is collected


def pin_native_threads(n: int = 1) -> None:
    global _limits
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.warning("threadpoolctl is not installed: numpy's BLAS threads are not pinned (set OPENBLAS_NUM_THREADS=1)")
        return
    _limits = threadpool_limits(limits=n, user_api="blas")
