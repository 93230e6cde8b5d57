"""``kws-server --processes N``: N server processes on the same ports, one GIL and one BLAS thread each.

The supervisor starts copies of ``kws-server`` with ``--processes 1 --reuse-port`` (SO_REUSEPORT: the kernel
spreads connections over them), passes SIGTERM/SIGINT on, and stops the rest when one dies.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from kws_rpc.serving.config import ServerConfig

log = logging.getLogger("kws_rpc.serving.server")  # the server's log, as before the supervisor had its own module


def supervise(config: ServerConfig, argv: list[str]) -> int:
    """Runs config.processes copies of this server on the same ports (SO_REUSEPORT: the kernel spreads
    connections over them), each pinned to one BLAS thread before numpy loads; SIGTERM/SIGINT are passed
    on. If one process dies, the others are stopped and its exit status returned (systemd restarts)."""
    base = [a for i, a in enumerate(argv) if not (a.startswith("--processes") or
                                                   (i > 0 and argv[i - 1] == "--processes"))]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    procs = []
    for i in range(config.processes):
        extra = ["--processes", "1", "--reuse-port"]
        if config.metrics_port is not None:
            extra += ["--metrics-port", str(config.metrics_port + i)]
        procs.append(subprocess.Popen([sys.executable, "-m", "kws_rpc.serving.server", *base, *extra], env=env))
    log.info("started %d server processes on gRPC :%d%s", len(procs), config.port,
             f", gateway :{config.gateway_port}" if config.gateway_port is not None else "")

    stopping: list[int] = []

    def forward(signum: int, _: FrameType | None) -> None:
        if stopping:  # once: a second signal could reach a child in interpreter shutdown and kill it
            return
        stopping.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while not any(p.poll() is not None for p in procs):
        time.sleep(0.2)
    if not stopping:
        log.error("a server process exited on its own (status %s): stopping the others", [p.poll() for p in procs])
    forward(signal.SIGTERM, None)
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c), 0)
