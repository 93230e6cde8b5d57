"""The serving benchmark: its summary (each server at its best process count, the mean of the passes), and
the empty grpc.aio server it is read against."""

from bench.bench_peers import summarize


def row(server, processes, req_per_s, passes=0, payload="grpc-wav", clients=32):
    return {"pass": passes, "server": server, "processes": processes, "payload": payload, "clients": clients,
            "req_per_s": req_per_s, "p99_ms": 10.0, "cpu_ms_per_req": 1.0}


def test_summary_takes_each_servers_best_process_count_and_the_mean_of_passes() -> None:
    rows = [row("kws", 1, 500), row("kws", 2, 900), row("kws", 2, 1100, passes=1),
            row("kserve", 1, 800), row("kserve", 2, 600), row("mlserver", 1, 700),
            row("kws", 2, 5000, clients=1)]  # another concurrency: not in the 32-client summary
    (wav, *_) = summarize(rows)
    assert wav["kws req/s (2p)"] == 1000 and wav["kserve req/s (1p)"] == 800
    assert wav["kws / best peer"] == 1000 / 800


def test_summary_puts_kws_over_v2_beside_the_peers() -> None:
    rows = [row("kws", 2, 1000), row("kws-v2", 2, 900), row("kserve", 1, 600), row("mlserver", 2, 750)]
    (wav, *_) = summarize(rows)
    assert wav["kws / best peer"] == 1000 / 750 and wav["kws V2 / best peer"] == 900 / 750


def test_empty_grpc_server_answers_every_payload_and_reports_its_cpu(tmp_path) -> None:
    """bench.empty_grpc's server answers the kws bodies with no error and its CPU per call is counted."""
    import json

    from bench import empty_grpc

    out = tmp_path / "empty.json"
    assert empty_grpc.main(["--clients", "2", "--seconds", "0.5", "--rounds", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["payload"] for r in rows] == list(empty_grpc.PAYLOADS)
    assert all(r["req_per_s"] > 0 and r["cpu_us_per_call"] > 0 and r["errors"] == 0 for r in rows)


def test_empty_grpc_names_what_grpclib_needs_when_it_is_missing(capsys) -> None:
    """grpclib is not a kws dependency: asking for it without it installed is a usage error that says how."""
    import importlib.util

    import pytest

    from bench import empty_grpc

    if importlib.util.find_spec("grpclib") is not None:
        pytest.skip("grpclib is installed here")
    with pytest.raises(SystemExit) as exit_:
        empty_grpc.main(["--server", "grpclib"])
    assert exit_.value.code == 2
    assert "pip install --target DIR grpclib" in capsys.readouterr().err
