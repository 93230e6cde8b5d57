"""`make lock`: resolve the pinned, hashed requirements of every environment from pyproject.toml.

pyproject.toml keeps version ranges (for people who install kws as a library); the files in
requirements/ pin one exact version of every package, with the sha256 of every wheel and sdist of that
version, so `pip install --require-hashes` installs the same set on every machine. The locks are
universal: one file serves Linux x86_64 and aarch64 (a Raspberry Pi) and Python 3.11 and up, each
platform-dependent line carrying its marker.

By default the existing pins are kept (uv reads the old file as its preferences) and only what the ranges
force moves, so running it twice changes nothing. `--upgrade PKG ...` moves those packages to their newest
allowed release, `--upgrade all` moves everything. It prints every pin that changed, and exits 3 when
grpcio-tools moved: the committed generated code must then be regenerated (`make protos`), which the
Makefile's lock target does for you.

Standard library only: it runs before anything of kws is installed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQ = ROOT / "requirements"
PYTHON = "3.11"  # the oldest Python the locks must serve (Raspberry Pi OS bookworm, this project's CI)
PROTO_TOOL = "grpcio-tools"
# The Pi's platform: the edge lock must have a wheel for it of every package (no compiler on a Pi).
# Raspberry Pi OS bookworm (64-bit) has glibc 2.36, so any manylinux tag up to 2_36 installs there.
PI_PLATFORMS = ("manylinux2014_aarch64", *(f"manylinux_2_{v}_aarch64" for v in range(17, 37)))


@dataclass(frozen=True)
class Env:
    """One environment: the pyproject extras it installs, plus extra requirement files (requirements/*.in)."""

    name: str
    extras: tuple[str, ...]
    inputs: tuple[str, ...] = field(default=())
    about: str = ""

    @property
    def lock(self) -> Path:
        return REQ / f"{self.name}.txt"


ENVS = (
    Env("main", ("train", "server", "edge", "dev"), ("build.in",),
        "make venv: server, edge, training (TensorFlow) and the test tools"),
    Env("edge", ("edge",), ("build.in", "edge-test.in"),
        "the Pi (no TensorFlow, no broker), and the tools CI's edge-only tests need"),
    Env("tools", (), ("tools.in",), "uv, which make lock itself runs"),
    Env("peers-kserve", (), ("peers-kserve.in", "build.in"), "make bench-peers: KServe 0.21"),
    Env("peers-mlserver", (), ("peers-mlserver.in", "build.in"), "make bench-peers: MLServer 1.7"),
    Env("triton-client", (), ("triton-client.in",), "tests/test_v2.py: tritonclient 2.73 (make .venv-triton)"),
)

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)(?:\s*;\s*([^\\]+?))?\s*\\?$", re.M)


def pins(path: Path) -> dict[str, str]:
    """name -> version (with its marker when the lock has several versions of one package)."""
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for name, version, marker in PIN.findall(path.read_text()):
        key = name.lower() if not marker else f"{name.lower()} ; {marker.strip()}"
        out[key] = version
    return out


def compile_env(uv: str, env: Env, upgrade: list[str]) -> None:
    """Resolves env into its lock. uv reads the old lock as its preferences; the file is replaced only when
    its text changes, so an unchanged lock keeps its mtime and `make venv` does not rebuild for nothing."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / env.lock.name
        if env.lock.is_file():
            shutil.copyfile(env.lock, out)
        cmd = [uv, "pip", "compile", "--quiet", "--universal", "--python-version", PYTHON, "--generate-hashes",
               "--custom-compile-command", "make lock", "--constraint", "requirements/constraints.txt",
               "--output-file", str(out)]
        if env.extras:
            cmd.append("pyproject.toml")
            for extra in env.extras:
                cmd += ["--extra", extra]
        cmd += [str((REQ / i).relative_to(ROOT)) for i in env.inputs]
        if upgrade == ["all"]:
            cmd.append("--upgrade")
        else:
            for pkg in upgrade:
                cmd += ["--upgrade-package", pkg]
        subprocess.run(cmd, cwd=ROOT, check=True)
        if not env.lock.is_file() or out.read_text() != env.lock.read_text():
            shutil.copyfile(out, env.lock)


def check_pi(env: Env) -> None:
    """Download every pinned wheel of the env for the Pi (aarch64, CPython 3.11), checking their hashes."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", PYTHON, "--implementation", "cp", "--require-hashes",
               "-r", str(env.lock), "--dest", tmp]
        for p in PI_PLATFORMS:
            cmd += ["--platform", p]
        subprocess.run(cmd, cwd=ROOT, check=True)
        print(f"{env.lock.relative_to(ROOT)}: {len(os.listdir(tmp))} wheels for the Pi (aarch64, "
              f"CPython {PYTHON}), hashes checked")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uv", default=shutil.which("uv") or "uv", help="the uv executable (default: uv on PATH)")
    ap.add_argument("--upgrade", nargs="*", default=[], metavar="PKG",
                    help="move these packages to their newest allowed release ('all' moves every pin)")
    ap.add_argument("--env", nargs="*", choices=[e.name for e in ENVS], default=None,
                    help="lock only these environments (default: all)")
    ap.add_argument("--no-pi-check", action="store_true",
                    help="skip downloading the edge lock's aarch64 wheels (the check that a Pi can install it)")
    args = ap.parse_args(argv)
    tool_moved = False
    for env in ENVS:
        if args.env and env.name not in args.env:
            continue
        before = pins(env.lock)
        compile_env(args.uv, env, args.upgrade)
        after = pins(env.lock)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        print(f"{env.lock.relative_to(ROOT)} ({env.about}): "
              + (f"{len(changed)} pins changed" if changed else "unchanged"))
        for k in changed:
            print(f"  {k}: {before.get(k, '-')} -> {after.get(k, '-')}")
        tool_moved |= env.name == "main" and any(k.split(" ;")[0] == PROTO_TOOL for k in changed)
        if env.name == "edge" and not args.no_pi_check:
            check_pi(env)
    if tool_moved:
        print(f"{PROTO_TOOL} moved: the generated code in kws_rpc/proto/kws/v1 must be regenerated (make protos)")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
