"""Ports a kws server holds alone, even when its processes share them through SO_REUSEPORT.

SO_REUSEPORT lets every socket that sets it bind a port already bound by another: that is how the
processes of one `kws-server --processes N` share their ports, and also how a second server (or the
orphans of a killed one) would silently share them, so that some connections reach another model. Before
it binds anything, a server claims each of its ports:

- an abstract Unix socket named after the port (Linux): a second kws server finds the name taken. The
  kernel frees it when the last process holding it exits, so a killed server leaves no stale lock; the
  supervisor's children inherit it, so the name stays taken until the last of them is gone;
- a test bind of the TCP port without SO_REUSEPORT: any listener on it (another program, a kws server of
  an older release) makes it fail, where a SO_REUSEPORT bind would have succeeded.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Iterable


class PortTaken(RuntimeError):
    """A port this server needs is held by another process."""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def probe(host: str, port: int) -> None:
    """Raises PortTaken if anything listens on host:port (SO_REUSEADDR only: TIME_WAIT does not count)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            raise PortTaken(f"port {port} on {host} is already in use by another process "
                            f"(`ss -ltnp 'sport = :{port}'` shows which); stop it or choose another port") from None


class PortClaim:
    """The claim on a set of ports; ``fds()`` are passed to child processes, which then hold it too."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self._sockets = sockets

    def fds(self) -> tuple[int, ...]:
        return tuple(s.fileno() for s in self._sockets)

    def release(self) -> None:
        for s in self._sockets:
            s.close()
        self._sockets = []


def claim(host: str, ports: Iterable[int | None], what: str = "kws server") -> PortClaim:
    """Claims each fixed port (None and 0 are skipped: the OS picks a free one) or raises PortTaken."""
    held: list[socket.socket] = []
    try:
        for port in dict.fromkeys(p for p in ports if p):
            if sys.platform.startswith("linux"):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.bind(f"\0kws/port/{port}")
                except OSError as e:
                    s.close()
                    if e.errno != errno.EADDRINUSE:
                        raise
                    raise PortTaken(f"port {port} is held by another {what} on this machine (its processes may "
                                    f"be orphans of a killed one: `ss -ltnp 'sport = :{port}'` shows them); stop "
                                    "it or choose another port") from None
                held.append(s)
            probe(host, port)
    except BaseException:
        for s in held:
            s.close()
        raise
    return PortClaim(held)
