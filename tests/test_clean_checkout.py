"""Runs do not dirty the checkout: every CLI writes under results/ (gitignored) unless told otherwise, the
committed figures change only through the Makefile's *-commit targets, and no committed JSON records
where a developer keeps the checkout."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from edge.lab import calibrate, evaluate as client, payload
from kws_rpc.lab import coop
from kws_rpc.lab import evaluate

REPO = Path(__file__).resolve().parent.parent
with mock.patch.object(sys, "path", [str(REPO), *sys.path]):  # bench/ runs as `python -m bench.X` from the repo
    bench_coop = importlib.import_module("bench.bench_coop")
    bench_server = importlib.import_module("bench.bench_server")
RESULTS = REPO / "results"
# An absolute path into a home, /root, /tmp or a work folder, at the start of a string or after a space,
# quote, '=' or ':' (so URLs such as http://host/tmp/ do not count).
ABSOLUTE = re.compile(r"(?:^|[\s\"'=:(])/(?:home|root|tmp|work|Users|mnt)/")


def committed_json() -> list[Path]:
    """The JSON files git tracks (all of models/ and bench/results/ when this is not a git checkout)."""
    try:
        names = subprocess.run(["git", "ls-files", "-z", "--", "*.json"], cwd=REPO, capture_output=True,
                               check=True).stdout.decode().split("\0")
        return [REPO / n for n in names if n and (REPO / n).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return sorted([*REPO.glob("models/*.json"), *REPO.glob("bench/results/*.json")])


def strings(doc: Any) -> Iterator[str]:
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for k, v in doc.items():
            yield k
            yield from strings(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from strings(v)


def test_committed_json_records_no_absolute_paths() -> None:
    files = committed_json()
    rel = {f.relative_to(REPO).as_posix() for f in files}
    assert {"models/cascade.json", "bench/results/server.json", "bench/results/coop.json"} <= rel
    bad = [f"{f.relative_to(REPO)}: {s!r}" for f in files for s in strings(json.loads(f.read_text()))
           if ABSOLUTE.search(s)]
    assert not bad, "absolute paths in committed files (record repo-relative ones):\n" + "\n".join(bad)


class _Parsed(Exception):
    pass


def parsed_by(main: Callable[[list[str]], Any], argv: Sequence[str]) -> argparse.Namespace:
    """The arguments ``main(argv)`` parses, for a CLI that builds its parser inside main: main stops there."""
    real = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> argparse.Namespace:
        raise _Parsed(real(self, args, namespace))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture), pytest.raises(_Parsed) as e:
        main(list(argv))
    return e.value.args[0]


def _calibrate(argv: Sequence[str]) -> list[str]:
    a = calibrate.parse_args(list(argv))
    return [a.out, a.results]


# What each CLI writes, from its own argument parser: module -> argv -> output files or folders.
WRITES: dict[str, Callable[[Sequence[str]], list[str]]] = {
    "kws_rpc.lab.evaluate": lambda argv: [evaluate.build_parser().parse_args(argv).out],
    "edge.lab.calibrate": _calibrate,
    "edge.lab.payload": lambda argv: [payload.build_parser().parse_args(argv).out],
    "edge.lab.evaluate": lambda argv: [client.config_from_args(client.parse_args(list(argv))).report],
    "kws_rpc.lab.coop": lambda argv: [coop.build_parser().parse_args(["--broker", "mqtt://127.0.0.1:1", *argv]).report],
    "kws_rpc.lab.coop_demo": lambda argv: [coop.build_parser().parse_args(  # it hands the coop client its flags
        ["--broker", "mqtt://127.0.0.1:1", *[a for a in argv if a not in ("--models", "--deployment")]]).report],
    "bench.bench_server": lambda argv: [bench_server.parse_args(list(argv)).out],
    "bench.bench_coop": lambda argv: [bench_coop.build_parser().parse_args(argv).out],
}


def under_results(path: str | Path) -> bool:
    p = Path(path)
    return (p if p.is_absolute() else REPO / p).resolve().is_relative_to(RESULTS)


@pytest.mark.parametrize("module,argv", [
    ("kws_rpc.lab.evaluate", []), ("edge.lab.calibrate", []), ("edge.lab.calibrate", ["--sweep"]), ("edge.lab.payload", []),
    ("edge.lab.evaluate", []), ("edge.lab.evaluate", ["--transport", "grpc", "--payload", "mfcc-q5z"]), ("kws_rpc.lab.coop", []),
    ("bench.bench_server", []), ("bench.bench_coop", []),
])
def test_cli_defaults_write_under_results(module: str, argv: list[str]) -> None:
    outputs = WRITES[module](argv)
    assert outputs and all(under_results(p) for p in outputs), outputs


def test_runs_read_the_installed_thresholds() -> None:
    """make calibrate writes results/cascade.json; runs keep reading models/cascade.json until it is
    installed there (make calibrate-commit), or until --cascade names another file."""
    installed = REPO / "models" / "cascade.json"
    assert Path(client.parse_args([]).cascade) == installed
    assert Path(calibrate.parse_args(["--sweep"]).cascade) == installed
    assert Path(payload.build_parser().parse_args([]).cascade) == installed
    assert Path(calibrate.parse_args([]).out) == RESULTS / "cascade.json"


def test_demo_writes_only_under_results() -> None:
    spec = importlib.util.spec_from_file_location("kws_demo", REPO / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    scripts = {"kws-eval": ("kws_rpc.lab.evaluate", 1), "kws-edge": ("edge.lab.evaluate", 2)}  # + "eval"
    for step, cmd in demo.commands(5, 50051, 8080).items():
        if cmd[0] == "kws-server":  # writes nothing
            continue
        if cmd[0] == "-m":
            module, args = cmd[1], cmd[2:]
        else:
            module, skip = scripts[cmd[0]]
            args = cmd[skip:]
        outputs = WRITES[module](args)
        assert outputs and all(under_results(p) for p in outputs), (step, outputs)


def makefile_recipes() -> dict[str, list[str]]:
    recipes: dict[str, list[str]] = {}
    target = ""
    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith("\t"):
            recipes.setdefault(target, []).append(line.strip())
        elif m := re.match(r"^([\w./$()-]+):", line):
            target = m.group(1)
    return recipes


def test_only_commit_targets_write_committed_figures() -> None:
    recipes = makefile_recipes()
    committed = re.compile(r"bench/results/|models/cascade\.json")
    writers = {t for t, lines in recipes.items() if any(committed.search(x) for x in lines)}
    assert writers == {"eval-commit", "calibrate-commit", "bench-server-commit", "bench-coop-commit", "bench-codec-commit",
                       "bench-peers-commit"}
