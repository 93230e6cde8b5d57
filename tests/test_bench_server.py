"""Every payload of bench-server is a request the real server answers: a bench that sent malformed bodies
would measure error paths. A few requests of each, on a real kws-server process."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_server import PAYLOADS, ServerProcess, request_bodies, run_cell

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models" / "big_int8.tflite"


@pytest.fixture(scope="module")
def server() -> ServerProcess:
    s = ServerProcess(MODEL, processes=1, batch=1, delay_ms=2.0)
    yield s
    s.stop()


def test_every_payload_is_answered(server: ServerProcess) -> None:
    bodies = request_bodies(MODEL)
    assert set(bodies) == set(PAYLOADS) and all(len(b) == 8 for b in bodies.values())
    for payload in PAYLOADS:
        cell = run_cell(server, payload, bodies[payload], clients=2, requests=16, seconds=30, model="big_int8")
        assert cell["errors"] == 0 and cell["wrong"] == 0 and cell["requests"] == 16, (payload, cell)
        assert cell["cpu_ms_per_req"] > 0, payload


def test_grpc_clients_take_turns_over_a_list_of_targets(server: ServerProcess) -> None:
    """bench.reuseport_split's balanced setup: a comma-separated target spreads the clients over the servers
    (here one live and one dead port: half the clients answer, half fail), and each client's mean is kept."""
    from bench.load import Job, drive
    from tests.support.network import free_port

    body = request_bodies(MODEL)["grpc-wav"]
    out = drive(Job("grpc", f"127.0.0.1:{server.port},127.0.0.1:{free_port()}", body, clients=4, requests=40,
                    seconds=30), processes=1)
    assert 0 < len(out["latencies"]) < 40 and out["errors"] == 40 - len(out["latencies"]) and out["wrong"] == 0
    assert len(out["client_mean_s"]) == 2 and all(m > 0 for m in out["client_mean_s"])
