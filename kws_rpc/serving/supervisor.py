"""``kws-server --processes N``: N server processes on the same ports, one GIL and one BLAS thread each.

The supervisor claims the ports (kws_rpc.serving.ports), starts copies of ``kws-server`` with
``--processes 1 --reuse-port`` (SO_REUSEPORT: the kernel spreads connections over them) that die with it
(kws_rpc.serving.lifeline), passes SIGTERM/SIGINT on, and stops the whole server when one dies.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from kws_rpc.serving import lifeline, ports
from kws_rpc.serving.config import ServerConfig

log = logging.getLogger("kws_rpc.serving.server")  # the server's log, as before the supervisor had its own module


def exit_status(code: int) -> int:
    """A child's Popen returncode as a shell would report it (-9 -> 137)."""
    return 128 - code if code < 0 else code


def describe_exit(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"


def supervise(config: ServerConfig, argv: list[str]) -> int:
    """Runs config.processes copies of this server on the same ports (SO_REUSEPORT: the kernel spreads
    connections over them), each pinned to one BLAS thread before numpy loads; SIGTERM/SIGINT are passed
    on. The ports are claimed first (kws_rpc.serving.ports), so a second server on them is refused instead of
    sharing them, and the children hold the claim and die with this process (kws_rpc.serving.lifeline), however
    it dies.

    If a child dies on its own, the others are stopped and the supervisor exits non-zero (the child's
    status, or 1 if it exited 0). It does not restart it: a process that died (a crash, the OOM killer) left
    the server in a state nobody chose, and restarting one process in place hides a crash loop; the service
    manager (systemd's Restart=on-failure, Kubernetes) restarts the whole server with back-off and counts it."""
    base = [a for i, a in enumerate(argv) if not (a.startswith("--processes") or
                                                   (i > 0 and argv[i - 1] == "--processes"))]
    metrics_ports = ([config.metrics_port + i for i in range(config.processes)]
                     if config.metrics_port is not None else [])
    held = ports.claim(config.host, [config.port, config.gateway_port, *metrics_ports])
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", lifeline.ENV: str(os.getpid())}
    procs = []
    for i in range(config.processes):
        extra = ["--processes", "1", "--reuse-port"]
        if config.metrics_port is not None:
            extra += ["--metrics-port", str(config.metrics_port + i)]
        procs.append(subprocess.Popen([sys.executable, "-m", "kws_rpc.serving.server", *base, *extra], env=env,
                                      pass_fds=held.fds()))
    held.release()  # the children hold the claim now: it ends with the last of them
    log.info("started %d server processes (pids %s) on gRPC :%d%s", len(procs), [p.pid for p in procs],
             config.port, f", gateway :{config.gateway_port}" if config.gateway_port is not None else "")

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
        time.sleep(0.1)
    asked = bool(stopping)  # a signal told us to stop, rather than a child dying
    if not asked:
        for i, p in enumerate(procs):
            if p.returncode is not None:
                log.error("server process %d (pid %d) died on its own (%s): stopping the whole server", i,
                          p.pid, describe_exit(p.returncode))
        died = next(p.returncode for p in procs if p.returncode is not None)
    forward(signal.SIGTERM, None)
    codes = [p.wait() for p in procs]
    if not asked:
        return exit_status(died) or 1
    return next((exit_status(c) for c in codes if c), 0)
