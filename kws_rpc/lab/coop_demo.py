"""`make coop`: cooperative inference in one command, on one machine. An embedded amqtt broker on
loopback, one in-process worker per ensemble member (models/ensemble.json), and the edge's own coop
client (``kws_rpc.lab.coop``, the ``kws-coop`` command) against them; every flag not listed here goes to the client.

    python -m kws_rpc.lab.coop_demo --split test --policy auto

The demo lives on the server side: the Pi's client (``kws-coop --broker ...``) never imports
a broker or a worker, so the edge install needs neither amqtt nor the server extras.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kws_rpc.lab import coop
from kws_rpc.mqtt.broker import EmbeddedBroker
from kws_rpc.mqtt.connection import BrokerSettings
from kws_rpc.mqtt.worker import Worker, WorkerConfig


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=coop.default_members(),
                   help="one in-process worker per model (default: the members in models/ensemble.json)")
    p.add_argument("--deployment", default="default", help="topic namespace: kws/<deployment>/...")
    args, client_args = p.parse_known_args(argv)
    with EmbeddedBroker() as broker:
        settings = BrokerSettings.from_url(broker.url, protocol=broker.PROTOCOL)
        workers = [Worker(WorkerConfig(m, settings, args.deployment, f"w{i}-{Path(m).stem}")).start()
                   for i, m in enumerate(args.models)]
        try:
            coop.main(["--broker", broker.url, "--deployment", args.deployment, "--workers", str(len(workers)),
                       "--protocol", broker.PROTOCOL, *client_args], embedded=True)
        finally:
            for w in workers:
                w.stop()


if __name__ == "__main__":
    main()
