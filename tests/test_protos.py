"""The committed generated code must be what `make protos` produces now (never stale)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    # protoc runs in its own process: in one that has loaded TensorFlow it can crash.
    r = subprocess.run([sys.executable, "-m", "kws_rpc.protogen", "--out", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    fresh = sorted(p for p in tmp_path.rglob("*_pb2*.py*"))
    assert fresh, "protogen generated nothing"
    for f in fresh:
        committed = REPO / "kws_rpc" / "proto" / f.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} missing: run `make protos`"
        assert committed.read_bytes() == f.read_bytes(), f"{committed} is stale: run `make protos`"


def test_runtime_protobuf_is_not_older_than_gencode() -> None:
    from kws_rpc.proto.kws.v1 import kws_pb2

    # The generated module checks the runtime version at import (ValidateProtobufRuntimeVersion).
    assert kws_pb2.DESCRIPTOR.package == "kws.v1"
