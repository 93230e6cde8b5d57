"""`kws-coop`: the Pi's cooperative client, as the Pi runs it (also ``python -m edge.coop``).

The MQTT participant is ``kws_rpc.mqtt.coop``; the run over a data set split, the policy choice and the
report are ``kws_rpc.lab.coop``. This module is the Pi's entry point to them, beside ``edge.cli``.
"""

from kws_rpc.lab.coop import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    main()
