"""`make protos`: regenerates kws/v1/*_pb2*.py from protos/ with grpcio-tools.

The generated code is committed (an edge install needs no grpcio-tools); tests/test_protos.py
regenerates into a temporary folder and fails if the committed files are stale.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"


def protos() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


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
    return generated


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT), help="output root (default: the repo, giving kws/v1/)")
    out = Path(ap.parse_args(argv).out)
    for p in generate(out):
        print(f"generated {p.relative_to(out)}")


if __name__ == "__main__":
    sys.exit(main())
