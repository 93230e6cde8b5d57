"""A multi-process kws-server as an operator meets it: its children die with the supervisor however it dies,
a second server on the same ports is refused, and a child that dies stops the whole server with a non-zero
exit (kws_rpc.serving.supervisor documents why it does not restart it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from kws_rpc.serving import ports

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_free(port: int) -> bool:
    try:
        ports.probe(LOOPBACK, port)
        return True
    except ports.PortTaken:
        return False


def alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def ready(gateway_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{gateway_port}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Server:
    """`python -m kws_rpc.serving.server --processes 2` on fixed loopback ports, started as a user starts it."""

    def __init__(self, model: Path, grpc_port: int, gateway_port: int, processes: int = 2) -> None:
        self.grpc_port, self.gateway_port = grpc_port, gateway_port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kws_rpc.serving.server", "--model", str(model), "--port", str(grpc_port),
             "--gateway-port", str(gateway_port), "--processes", str(processes), "--grace", "1"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.ps = psutil.Process(self.proc.pid)

    def wait_ready(self, children: int = 2, timeout_s: float = 90) -> list[psutil.Process]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.communicate()[1]
            kids = self.ps.children()
            if len(kids) == children and ready(self.gateway_port):
                # both children serve once each answers; give the second a moment past the first's /readyz
                time.sleep(1.0)
                return kids
            time.sleep(0.2)
        raise AssertionError("the server did not become ready")

    def stop(self) -> None:
        for p in [self.ps, *self.ps.children()] if alive(self.ps) else []:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(10)


@pytest.fixture
def server(served_model_path: Path):
    started: list[Server] = []

    def start(*args, **kwargs) -> Server:
        s = Server(served_model_path, *args, **kwargs)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def test_sigkilled_supervisor_leaves_no_process_and_frees_both_ports(server) -> None:
    grpc_port, gateway_port = free_ports(2)
    s = server(grpc_port, gateway_port)
    kids = s.wait_ready()
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait(5)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and (any(map(alive, kids)) or not port_free(grpc_port)
                                           or not port_free(gateway_port)):
        time.sleep(0.05)
    assert not [k.pid for k in kids if alive(k)], "children outlived their SIGKILLed supervisor"
    assert port_free(grpc_port) and port_free(gateway_port), "the ports are still held 2 s after the kill"


def test_a_second_server_on_the_same_ports_is_refused_and_the_first_serves_on(server, served_model_path) -> None:
    grpc_port, gateway_port = free_ports(2)
    first = server(grpc_port, gateway_port)
    first.wait_ready()
    for processes in (2, 1):
        r = subprocess.run([sys.executable, "-m", "kws_rpc.serving.server", "--model", str(served_model_path),
                            "--port", str(grpc_port), "--gateway-port", str(gateway_port),
                            "--processes", str(processes)],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
        assert r.returncode != 0
        assert f"port {grpc_port}" in r.stderr and "another kws server" in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr
    assert first.proc.poll() is None
    assert all(ready(gateway_port) for _ in range(20)), "the first server stopped answering"


def test_a_gateway_on_a_taken_port_says_so_and_exits_non_zero() -> None:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "kws_rpc.serving.gateway", "--grpc-target", f"{LOOPBACK}:9",
                            "--port", str(port)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert f"port {port} on {LOOPBACK} is already in use" in r.stderr, r.stderr[-2000:]


def test_a_dead_child_stops_the_whole_server_with_a_non_zero_exit(server) -> None:
    grpc_port, gateway_port = free_ports(2)
    s = server(grpc_port, gateway_port)
    kids = s.wait_ready()
    os.kill(kids[1].pid, signal.SIGKILL)
    code = s.proc.wait(30)
    err = s.proc.stderr.read()
    assert code == 128 + signal.SIGKILL, err[-2000:]
    assert f"(pid {kids[1].pid}) died on its own (killed by SIGKILL): stopping the whole server" in err
    assert not any(map(alive, kids))
    assert port_free(grpc_port) and port_free(gateway_port)


def test_claim_refuses_a_port_claimed_in_this_process_and_frees_it_on_release() -> None:
    (port,) = free_ports(1)
    held = ports.claim(LOOPBACK, [port, None, 0])
    with pytest.raises(ports.PortTaken, match=f"port {port} is held by another kws server"):
        ports.claim(LOOPBACK, [port])
    held.release()
    ports.claim(LOOPBACK, [port]).release()
