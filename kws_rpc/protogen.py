"""`make protos`: regenerates kws_rpc/proto/{kws/v1,inference}/*_pb2*.py from protos/ with grpcio-tools.

The generated code is committed (an edge install needs no grpcio-tools); tests/test_protos.py
regenerates into a temporary folder and fails if the committed files are stale. The proto package stays
``kws.v1`` (so gRPC method paths are ``/kws.v1.KeywordSpotting/...``), and the Open Inference Protocol's
stays ``inference``; only the Python package that holds the generated modules is ``kws_rpc.proto``, so
protoc's absolute ``from kws.v1 import`` (``from inference import``) lines are rewritten.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "kws_rpc.proto"  # the Python package the generated tree sits in
OUT = ROOT / Path(*PACKAGE.split("."))
PROTO_DIR = ROOT / "protos"


def protos() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def _rehome(path: Path, proto_packages: set[str]) -> None:
    """``from kws.v1 import kws_pb2`` -> ``from kws_rpc.proto.kws.v1 import kws_pb2``."""
    text = path.read_text()
    for pkg in proto_packages:
        text = re.sub(rf"^from {re.escape(pkg)} import ", f"from {PACKAGE}.{pkg} import ", text, flags=re.M)
    path.write_text(text)


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc

    include = str(resources.files("grpc_tools") / "_proto")
    files = [str(p.relative_to(PROTO_DIR)) for p in protos()]
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", *files]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    generated = []
    for f in files:
        stem = out_dir / f[: -len(".proto")]
        generated += [Path(f"{stem}_pb2.py"), Path(f"{stem}_pb2.pyi"), Path(f"{stem}_pb2_grpc.py")]
        for pkg in stem.relative_to(out_dir).parents:
            init = out_dir / pkg / "__init__.py"
            if pkg != Path(".") and not init.exists():
                init.write_text("")
    packages = {".".join(Path(f).parent.parts) for f in files}
    for path in generated:
        _rehome(path, packages)
    return generated


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(OUT), help="output root (default: %(default)s, giving its kws/v1/)")
    out = Path(ap.parse_args(argv).out)
    for p in generate(out):
        print(f"generated {p.relative_to(out)}")


if __name__ == "__main__":
    sys.exit(main())
