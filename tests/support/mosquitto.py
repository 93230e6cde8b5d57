"""A real mosquitto on loopback as a subprocess, stock or with a configuration file, so tests and benches
can kill and restart it."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.support.network import LOOPBACK, free_port, wait_listening


class Mosquitto:
    """A real mosquitto on loopback, restartable on the same port (for tests and benches).

    ``config=None`` runs it as users first meet it: ``mosquitto -p PORT``, no configuration file (loopback
    only, no persistence, at most 20 QoS 1/2 messages in flight per client). With a path (such as
    ``deploy/mosquitto.conf``) it runs that file with the listener moved to this port and persistence
    into a temporary folder.
    """

    def __init__(self, port: int = 0, config: str | Path | None = None, workdir: str | Path | None = None,
                 overrides: dict[str, str] | None = None) -> None:
        binary = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None)
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.port = port or free_port()
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="kws-mosquitto-"))
        self.proc: subprocess.Popen | None = None
        self.conf: Path | None = None
        if config is not None:
            # ``overrides`` replace the value of other keys (password_file, acl_file, cafile, ...).
            values = {"listener": f"{self.port} {LOOPBACK}", "persistence_location": f"{self.dir}/",
                      **(overrides or {})}
            lines = []
            for line in Path(config).read_text().splitlines():
                key = line.split(maxsplit=1)[0] if line.strip() else ""
                if key == "user":
                    continue
                lines.append(f"{key} {values[key]}" if key in values else line)
            # as root, mosquitto would switch to a user that cannot write the temporary folder
            lines.append(f"user {getpass.getuser()}")
            self.conf = self.dir / "mosquitto.conf"
            self.conf.write_text("\n".join(lines) + "\n")

    @property
    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.conf)] if self.conf else [self.binary, "-p", str(self.port)]

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    @staticmethod
    def available() -> bool:
        return shutil.which("mosquitto") is not None or os.path.exists("/usr/sbin/mosquitto")

    def start(self) -> "Mosquitto":
        with open(self.dir / "mosquitto.log", "ab") as log_file:
            self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=log_file)
        wait_listening(LOOPBACK, self.port)
        return self

    def stop(self, timeout_s: float = 10.0, kill: bool = False) -> None:
        """SIGTERM: mosquitto saves its sessions and queued messages to disk (if persistent) before
        exiting; ``kill`` sends SIGKILL instead (a crash: nothing saved, no last wills)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
