"""Past one machine: the edge client and a standalone gateway balance over two kws-server processes
(gRPC round_robin with health checks), and go on when one of them drains on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from edge.transports import GrpcTransport, RetryPolicy
from kws_rpc.wire.channels import channel_target
from tests.support.network import free_port, wait_listening
from tests.support.server_process import ServerProcess

REPO = Path(__file__).resolve().parent.parent


def answered(metrics_url: str) -> int:
    """Predict calls a server process answered OK, from its /metrics."""
    text = requests.get(metrics_url, timeout=5).text
    return int(sum(float(v) for labels, v in re.findall(r"^kws_requests_total\{([^}]*)\} (\S+)", text, re.M)
                   if 'method="Predict"' in labels and 'code="OK"' in labels))


@pytest.fixture
def two_servers(served_model_path: Path) -> Iterator[list[ServerProcess]]:
    servers = [ServerProcess(served_model_path, "--metrics-port", "0") for _ in range(2)]
    try:
        yield servers
    finally:
        for s in servers:
            s.stop()


def test_server_lists() -> None:
    assert channel_target("127.0.0.1:1") == ("127.0.0.1:1", False)
    assert channel_target("127.0.0.1:1, 127.0.0.2:2") == ("ipv4:127.0.0.1:1,127.0.0.2:2", True)
    assert channel_target("dns:///kws.internal:50051") == ("dns:///kws.internal:50051", True)
    for bad in ("", "a.example:1,b.example:2", "127.0.0.1:1,[::1]:2", "127.0.0.1,127.0.0.2:2"):
        with pytest.raises(ValueError):
            channel_target(bad)


def test_edge_balances_over_two_servers_and_survives_one_draining(two_servers: list[ServerProcess],
                                                                   test_audio) -> None:
    audio = test_audio[0][:60]
    target = ",".join(f"127.0.0.1:{s.port}" for s in two_servers)
    transport = GrpcTransport(target, encoding="logmel-q5z", policy=RetryPolicy(timeout_s=10.0, retries=3))
    try:
        first = [transport.ask(clip, str(i)) for i, clip in enumerate(audio[:40])]
        counts = [answered(s.metrics_url) for s in two_servers]
        two_servers[0].stop()  # SIGTERM: health NOT_SERVING, then gone
        rest = [transport.ask(clip, str(40 + i)) for i, clip in enumerate(audio[40:])]
    finally:
        transport.close()
    assert all(a.label for a in first + rest), [a.error for a in first + rest if not a.label]
    assert sum(counts) == 40 and min(counts) >= 10, f"round_robin should spread 40 calls: {counts}"
    assert answered(two_servers[1].metrics_url) == counts[1] + 20


def test_standalone_gateway_balances(two_servers: list[ServerProcess], clip_wavs: dict[str, bytes]) -> None:
    from kws_rpc.wire.senml import spec_body_for_wav

    port = free_port()
    target = ",".join(f"127.0.0.1:{s.port}" for s in two_servers)
    gw = subprocess.Popen([sys.executable, "-m", "kws_rpc.serving.gateway", "--grpc-target", target, "--port", str(port)],
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening("127.0.0.1", port, 60)
        labels = []
        for word, wav in sorted(clip_wavs.items()) * 3:
            r = requests.put(f"http://127.0.0.1:{port}/", data=__import__("json").dumps(spec_body_for_wav(wav, "t")),
                             timeout=10)
            assert r.status_code == 200, r.text
            labels.append(r.json()["label"])
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(30)
    counts = [answered(s.metrics_url) for s in two_servers]
    assert sum(counts) == len(labels) and min(counts) >= len(labels) // 4, counts
    assert np.mean([lab == w for lab, (w, _) in zip(labels, sorted(clip_wavs.items()) * 3)]) >= 0.75


def test_processes_share_the_ports(served_model_path: Path, test_audio) -> None:
    """kws-server --processes 2: both processes answer on the same gRPC and REST ports (SO_REUSEPORT),
    each with its own /metrics, and SIGTERM stops them all."""
    from kws_rpc.wire.senml import spec_body_for_wav

    port, gw, metrics = free_port(), free_port(), free_port()
    while metrics + 1 in (port, gw):
        metrics = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kws_rpc.serving.server", "--model", str(served_model_path), "--port",
                             str(port), "--gateway-port", str(gw), "--metrics-port", str(metrics), "--processes", "2",
                             "--log-level", "WARNING"], cwd=REPO)
    try:
        for p in (port, gw, metrics, metrics + 1):
            wait_listening("127.0.0.1", p, 60)
        audio = test_audio[0][:24]
        labels = []
        for i, clip in enumerate(audio):  # a new connection per clip: the kernel spreads connections
            t = GrpcTransport(f"127.0.0.1:{port}", encoding="wav", policy=RetryPolicy(timeout_s=10.0))
            labels.append(t.ask(clip, str(i)).label)
            t.close()
        import io
        import json
        import wave

        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes((audio[0] * 32767).astype("<i2").tobytes())
        for _ in range(8):
            r = requests.put(f"http://127.0.0.1:{gw}/", data=json.dumps(spec_body_for_wav(buf.getvalue(), "t")),
                             timeout=10, headers={"Connection": "close"})
            assert r.status_code == 200 and r.json()["label"] == labels[0]
        counts = [answered(f"http://127.0.0.1:{m}/metrics") for m in (metrics, metrics + 1)]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert all(labels) and sum(counts) == 32 and min(counts) > 0, counts
    assert code == 0
