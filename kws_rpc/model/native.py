"""Native settings of a process that serves or streams: numpy's BLAS thread pool, the C heap, and the GIL's
switch interval. Processes that serve or stream call ``tune_process()`` once at start; training does not.

- **BLAS threads.** numpy's OpenBLAS starts a thread per core and lets them spin after each matrix
  product; the mel filterbank product of kws_rpc.audio.features is small, so the spinning costs more CPU
  than the product (about 2 ms per request in the server; in the coop client, part of 1.6 s of CPU for
  800 clips). One thread.
- **The C heap.** One clip's features allocate and free about 0.7 MB of numpy arrays (the 49 x 513
  complex spectrum alone is 200 kB). glibc's malloc gives back the top of its heap once more than
  ``M_TRIM_THRESHOLD`` is free and maps larger blocks fresh, so every request faulted its pages in again:
  176 page faults a clip, half the CPU of the features (570 against 280 us here). The process keeps up
  to HEAP_KEEP_BYTES of freed memory instead. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)
_limits: object | None = None  # kept alive: threadpoolctl restores the old limits when it is collected

SWITCH_INTERVAL_S = 0.0005
M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 16 << 20  # blocks below this come from the heap (a batch of 32 clips' spectra: 6.4 MB)
HEAP_KEEP_BYTES = 32 << 20  # freed heap kept for the next request rather than returned to the kernel


def tune_process() -> None:
    """One BLAS thread and a heap that keeps freed memory: what every serving and streaming process wants."""
    pin_native_threads()
    keep_freed_heap()


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


def keep_freed_heap() -> bool:
    """Sets glibc's mmap and trim thresholds (as ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``
    would at start-up). Returns whether the C library took them; False on a libc without ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # macOS has no mallopt; Windows has no CDLL(None)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, HEAP_KEEP_BYTES))
    if not ok:  # e.g. musl, whose mallopt does nothing and says so
        log.debug("mallopt refused the heap thresholds; freed memory goes back to the kernel as before")
    return ok
