"""`kws-edge`: the Raspberry Pi's commands, one subcommand each.

    kws-edge eval --url https://server.lan:8080/       the cascade over a data set split, as the Pi runs it
    kws-edge eval --transport grpc --grpc server.lan:50051 --encoding logmel-q5z
    kws-edge classify recording.wav                   the word in each WAV file
    kws-edge listen --input mic                       keywords as they are heard (also --input - or FILE.wav)

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


@command("classify", "the word in each of your WAV files, by the little on the Pi")
def _classify(argv: list[str], prog: str) -> int:
    from edge import classify

    return classify.main(argv, prog)


def listen_parser(prog: str = "kws-edge listen") -> "argparse.ArgumentParser":
    """kws-edge listen's flags: edge.listen's, and the broker's for --mqtt (another layer's)."""
    import socket

    from edge import listen
    from kws_rpc.mqtt.options import add_broker_arguments

    ap = listen.parser(prog)
    ap.add_argument("--mqtt", default=None, metavar="URL",
                    help="also publish each event to this broker (mqtt://host:1883 or mqtts://...) on "
                         "kws/<--mqtt-device>/events, QoS 1")
    ap.add_argument("--mqtt-device", default=socket.gethostname(), help="the device in the topic (default: the host name)")
    add_broker_arguments(ap, prefix="mqtt-")
    return ap


@command("listen", "listen to a microphone, stdin or a WAV file and print each keyword as it is heard")
def _listen(argv: list[str], prog: str) -> int:
    from edge import listen
    from kws_rpc.mqtt.options import broker_settings

    ap = listen_parser(prog)
    a = ap.parse_args(argv)
    publisher = None
    if a.mqtt:
        from kws_rpc.mqtt.events import EventPublisher

        def publisher() -> EventPublisher:
            return EventPublisher(broker_settings(a.mqtt, a), a.mqtt_device)

    return listen.start(a, ap, publisher)


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
    from kws_rpc.model.native import tune_process

    tune_process()  # every command computes features clip after clip, as a server does
    return COMMANDS[name][1](rest, f"kws-edge {name}")


if __name__ == "__main__":
    raise SystemExit(main())
