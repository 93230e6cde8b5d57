"""`kws-edge`: the Raspberry Pi's commands, one subcommand each.

    kws-edge eval --url https://server.lan:8080/       the cascade over a data set split, as the Pi runs it
    kws-edge eval --transport grpc --grpc server.lan:50051 --encoding logmel-q5z

``kws-edge COMMAND --help`` explains each. The Pi's other commands: ``kws-coop`` (cooperative inference
over MQTT); on a development machine, ``kws-calibrate`` and ``kws-payload``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

# name -> (one line for the overview, the function that runs it with (argv, prog)).
# Imported when chosen, so a subcommand's dependencies load only when it runs.
COMMANDS: dict[str, tuple[str, Callable[[list[str], str], int]]] = {}


def command(name: str, summary: str) -> Callable[[Callable[[list[str], str], int]], Callable[[list[str], str], int]]:
    def register(run: Callable[[list[str], str], int]) -> Callable[[list[str], str], int]:
        COMMANDS[name] = (summary, run)
        return run
    return register


@command("eval", "the Big/Little cascade over a data set split (little here, big on the server when unsure)")
def _eval(argv: list[str], prog: str) -> int:
    from edge.lab import evaluate

    return evaluate.main(argv, prog)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kws-edge", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (summary, _) in COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # --help, or an error that lists the commands
        return 2
    name, rest = argv[0], argv[1:]
    return COMMANDS[name][1](rest, f"kws-edge {name}")


if __name__ == "__main__":
    raise SystemExit(main())
