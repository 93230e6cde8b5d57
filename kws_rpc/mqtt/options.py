"""The broker options every MQTT command takes (kws-worker, kws-coop), in one place.

Secrets are better kept off the command line (``ps`` shows it): ``--password-file`` or the environment
(``KWS_MQTT_PASSWORD``) work too. Every option also reads a ``KWS_MQTT_*`` environment variable.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kws_rpc.mqtt.connection import PROTOCOLS, BrokerSettings

ENV = {"username": "KWS_MQTT_USERNAME", "password": "KWS_MQTT_PASSWORD", "password_file": "KWS_MQTT_PASSWORD_FILE",
       "tls_ca": "KWS_MQTT_TLS_CA", "tls_cert": "KWS_MQTT_TLS_CERT", "tls_key": "KWS_MQTT_TLS_KEY"}


def add_broker_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The broker flags; ``prefix`` (e.g. "mqtt-") names them --mqtt-username etc. in a command whose own
    --tls-* flags are for something else (`kws-edge listen`: the server's TLS)."""
    g = p.add_argument_group("broker connection (each also read from the environment variable named)")
    f = f"--{prefix}"
    g.add_argument(f"{f}username", dest="username", help=f"MQTT user name (${ENV['username']}); workers default their id to it")
    g.add_argument(f"{f}password", dest="password", help=f"MQTT password (${ENV['password']}; prefer --{prefix}password-file)")
    g.add_argument(f"{f}password-file", dest="password_file",
                   help=f"file whose first line is the password (${ENV['password_file']})")
    g.add_argument(f"{f}tls-ca", dest="mqtt_tls_ca" if prefix else "tls_ca",
                   help=f"CA bundle that signed the broker's certificate; implies TLS (${ENV['tls_ca']})")
    g.add_argument(f"{f}tls-cert", dest="mqtt_tls_cert" if prefix else "tls_cert",
                   help=f"client certificate, for brokers that require one (${ENV['tls_cert']})")
    g.add_argument(f"{f}tls-key", dest="mqtt_tls_key" if prefix else "tls_key", help=f"its private key (${ENV['tls_key']})")
    g.add_argument(f"{f}protocol", dest="protocol", default="auto", choices=sorted(PROTOCOLS),
                   help="MQTT version of the data path; auto = 3.1.1 after an MQTT 5 probe has read the "
                        "broker's Receive Maximum (cheaper in paho), 5 = MQTT 5 throughout")


def broker_settings(url: str, args: argparse.Namespace, **extra: object) -> BrokerSettings:
    """BrokerSettings from the URL, the options above and their environment variables."""
    def given(k: str) -> object:
        return getattr(args, f"mqtt_{k}", None) if k.startswith("tls_") and hasattr(args, f"mqtt_{k}") else getattr(args, k, None)

    value = {k: given(k) or os.environ.get(env) or None for k, env in ENV.items()}
    password_file = value.pop("password_file")
    if password_file and not value["password"]:
        lines = Path(password_file).read_text().splitlines()
        value["password"] = lines[0] if lines else ""
    if bool(value["tls_cert"]) != bool(value["tls_key"]):
        raise ValueError("--tls-cert and --tls-key go together")
    return BrokerSettings.from_url(url, protocol=getattr(args, "protocol", "auto"), **value, **extra)
