"""One CLI convention: every command a user runs is a console script of pyproject.toml, explains itself
with --help, and is what the Makefile, deploy/ and CI call (never a `python -m` path of a runtime module)."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
# Run only where TensorFlow is (its --help would import it into the test process): checked as a path.
NOT_RUN = {"kws-train"}


def test_every_user_command_is_a_console_script() -> None:
    assert {"kws-server", "kws-gateway", "kws-worker", "kws-broker", "kws-edge", "kws-coop", "kws-calibrate",
            "kws-eval", "kws-compare", "kws-payload", "kws-certs", "kws-train"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_explains_itself(name: str) -> None:
    module, _, attr = SCRIPTS[name].partition(":")
    if name in NOT_RUN:
        assert importlib.util.find_spec(module) is not None
        return
    try:
        main = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as e:  # the server's commands on the Pi's install, say
        pytest.skip(f"{name}: {e.name} is not installed (another extra)")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0, name
    assert len(out.getvalue().splitlines()) > 3, out.getvalue()


def test_kws_edge_has_subcommands() -> None:
    from edge import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        cli.main(["eval", "--help"])
    assert e.value.code == 0 and out.getvalue().startswith("usage: kws-edge eval")
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as e:
        cli.main(["no-such-command"])
    assert e.value.code == 2


def test_makefile_deploy_and_ci_call_the_console_scripts() -> None:
    # deploy/k8s names its objects kws-*; tests/test_k8s.py parses its containers' commands instead
    texts = {p: p.read_text() for p in [REPO / "Makefile", REPO / ".ci" / "run", *(REPO / "deploy").rglob("*")]
             if p.is_file() and p.suffix not in (".acl", ".conf") and "k8s" not in p.relative_to(REPO).parts}
    used = {m for t in texts.values() for m in re.findall(r"(?<![\w.-])(kws-[a-z]+)(?=[\s\"'])", t)}
    assert {"kws-eval", "kws-edge", "kws-server", "kws-worker", "kws-calibrate"} <= used, used
    assert used <= set(SCRIPTS), used - set(SCRIPTS)
    runtime = re.compile(r"-m (kws_rpc\.(audio|model|wire|serving|security|mqtt)|edge)\b")
    assert {str(p.relative_to(REPO)): runtime.findall(t) for p, t in texts.items() if runtime.search(t)} == {}
