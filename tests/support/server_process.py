"""``python -m kws_rpc.serving.server`` with its gateway as a child process, for benchmarks and tests: one server
process on ports it picks itself (port 0), read back from its "serving" log line; stderr is kept.
(psutil, for the RSS, comes with the dev extras.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class ServerProcess:
    def __init__(self, model: Path, *args: str, start_timeout_s: float = 120.0) -> None:
        """``args`` are passed on to kws-server (limits, --metrics-port 0, ...)."""
        cmd = [sys.executable, "-m", "kws_rpc.serving.server", "--model", str(model), "--port", "0", "--gateway-port", "0",
               *args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True, errors="replace",
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.log: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(start_timeout_s) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("kws-server did not start:\n" + "".join(self.log[-20:]))
        line = next(x for x in self.log if " serving " in x)
        self.port = int(re.search(r"on grpc [\d.]+:(\d+)", line).group(1))  # type: ignore[union-attr]
        self.target = f"127.0.0.1:{self.port}"
        self.url = re.search(r"gateway (http://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
        metrics = re.search(r"metrics (http://\S+/metrics)", line)
        self.metrics_url = metrics.group(1) if metrics else None
        import psutil

        self.ps = psutil.Process(self.proc.pid)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            if " serving " in line:
                self._ready.set()
        self._ready.set()

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def stop(self, signal_timeout_s: float = 20.0) -> int:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time; returns the exit status."""
        self.proc.terminate()
        try:
            return self.proc.wait(signal_timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
