"""Broker address and the one way kws builds a paho client: MQTT 3.1.1 (amqtt speaks nothing newer), a
fixed client id with a persistent session (clean_session=False) so QoS-2 clips queued while a participant
is away are delivered once when it returns, and automatic reconnects with bounded back-off."""

from __future__ import annotations

import dataclasses
import ssl
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

SCHEMES = {"mqtt": (1883, False), "tcp": (1883, False), "mqtts": (8883, True), "ssl": (8883, True)}


@dataclasses.dataclass(frozen=True)
class BrokerSettings:
    host: str
    port: int
    tls: bool = False
    tls_ca: str | None = None  # CA bundle for TLS; None = system CAs
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 10  # how fast the broker notices a dead peer and fires its last will
    reconnect_min_s: float = 0.1
    reconnect_max_s: float = 2.0
    max_inflight: int = 100  # QoS 1/2 messages in flight per client (paho's default of 20 throttles QoS 2)

    @classmethod
    def from_url(cls, url: str, **kw: object) -> "BrokerSettings":
        """Parses ``mqtt://host:port`` (or ``mqtts://`` for TLS); user:password in the URL are honoured."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ValueError(f"broker URL {url!r} must look like mqtt://host:port or mqtts://host:port")
        default_port, tls = SCHEMES[parts.scheme]
        fields = {"host": parts.hostname, "port": parts.port or default_port, "tls": tls or bool(kw.get("tls_ca"))}
        if parts.username:
            fields["username"], fields["password"] = parts.username, parts.password
        fields.update({k: v for k, v in kw.items() if v is not None})
        return cls(**fields)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def make_client(settings: BrokerSettings, client_id: str, persistent: bool = True) -> mqtt.Client:
    """A configured, not yet connected client. Callers set callbacks and the will, then connect_async."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent,
                         protocol=mqtt.MQTTv311)
    client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
    client.max_inflight_messages_set(settings.max_inflight)
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        client.tls_set(ca_certs=settings.tls_ca, cert_reqs=ssl.CERT_REQUIRED)
    return client


def connect(client: mqtt.Client, settings: BrokerSettings) -> None:
    """Starts the network thread; paho keeps reconnecting on its own until loop_stop()."""
    client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s)
    client.loop_start()
