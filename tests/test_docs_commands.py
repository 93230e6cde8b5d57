"""Every kws command the README, docs/ and deploy/k8s/README.md show is one their readers can type: a
console script, with flags its own parser accepts (parsed by that parser, stopped before anything runs)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "deploy" / "k8s" / "README.md"]
NOT_PARSED = {"kws-train"}  # its parser lives beside TensorFlow, which stays out of the test process


def commands(text: str) -> list[list[str]]:
    """The kws-* command lines of a page's code blocks, as argv lists."""
    out = []
    for lang, block in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
        if lang not in ("", "bash", "sh", "console"):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"\|\||&&|\||;", line):
                try:
                    argv = shlex.split(part, comments=True)
                except ValueError:
                    continue
                while argv and re.match(r"^[A-Z_]+=", argv[0]):  # VAR=value prefixes
                    argv = argv[1:]
                if argv and argv[-1] == "&":
                    argv = argv[:-1]
                redirect = next((i for i, a in enumerate(argv) if re.match(r"^\d?>", a)), len(argv))
                argv = argv[:redirect]
                if argv and argv[0].startswith("kws-"):
                    out.append(argv)
    return out


CASES = [(page.relative_to(REPO).as_posix(), argv) for page in PAGES for argv in commands(page.read_text())]


class Parsed(Exception):
    pass


def test_the_pages_show_commands() -> None:
    assert len(CASES) >= 12 and {argv[0] for _, argv in CASES} >= {"kws-server", "kws-edge", "kws-worker", "kws-coop"}


@pytest.mark.parametrize("page,argv", CASES, ids=[f"{p}:{' '.join(a)[:60]}" for p, a in CASES])
def test_documented_command_parses(page: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    name, args = argv[0], argv[1:]
    assert name in SCRIPTS, f"{page} shows {name}, which is no console script of pyproject.toml"
    if name in NOT_PARSED:
        return
    module, _, attr = SCRIPTS[name].partition(":")
    try:
        main = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as e:
        pytest.skip(f"{name}: {e.name} is not installed here (another extra)")
    original = argparse.ArgumentParser.parse_known_args

    def parse_and_stop(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        namespace, extras = original(self, args, namespace)
        raise Parsed(extras)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_and_stop)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(Parsed) as stopped:
        try:
            main(args)
        except SystemExit as e:  # argparse refused the line
            raise AssertionError(f"{page}: `{shlex.join(argv)}` does not parse: {err.getvalue().strip()}") from e
    assert stopped.value.args[0] == [], f"{page}: `{shlex.join(argv)}`: unknown arguments {stopped.value.args[0]}"
