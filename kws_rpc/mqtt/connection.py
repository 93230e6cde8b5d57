"""Broker address and the one way kws builds a paho client.

``negotiate`` asks the broker once with an MQTT 5 CONNECT: one that accepts tells us its Receive Maximum,
the number of QoS 1/2 messages it will take in flight from one client (mosquitto announces its
``max_inflight_messages``, which it applies to every client). Publishers must stay under it: mosquitto
2.0 takes 20 by default and, for an MQTT 3.1.1 client that sends more, acknowledges the extra QoS 2
messages with a PUBREC and drops them; the sender believes them delivered. A broker that refuses MQTT 5
(amqtt) cannot say, and ``DEFAULT_INFLIGHT`` is the conservative guess.

The data path then speaks MQTT 3.1.1 unless ``protocol="5"``: paho decodes MQTT 5 properties on every
packet in Python, which cost the coop client about 0.25 ms of CPU per message (0.6 s of its 1.8 s in an
800-clip run with 3 workers, measured with yappi), and kws needs no MQTT 5 feature on the wire.

Sessions are persistent (a fixed client id; clean_session=False, or clean_start=False with a session
expiry in MQTT 5), so QoS 2 clips queued while a participant is away are delivered once when it
returns; paho reconnects on its own with bounded back-off.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import ssl
import threading
import time
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

log = logging.getLogger(__name__)
SCHEMES = {"mqtt": (1883, False), "tcp": (1883, False), "mqtts": (8883, True), "ssl": (8883, True)}
PROTOCOLS = {"auto": None, "5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}
DEFAULT_INFLIGHT = 16  # below mosquitto's default of 20, for brokers that cannot tell us (MQTT 3.1.1)
PROBE_WAIT_S = 2.0  # a connected broker silent this long to an MQTT 5 CONNECT is taken for 3.1.1
SESSION_EXPIRY_S = 3600  # MQTT 5: how long the broker keeps a persistent session of a client that left


@dataclasses.dataclass(frozen=True)
class BrokerSettings:
    host: str
    port: int
    tls: bool = False
    tls_ca: str | None = None  # CA bundle for TLS; None = system CAs
    tls_cert: str | None = None  # client certificate (PEM) for brokers that require one (mutual TLS)
    tls_key: str | None = None  # its private key
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 10  # how fast the broker notices a dead peer and fires its last will
    reconnect_min_s: float = 0.1
    reconnect_max_s: float = 2.0
    max_inflight: int = 100  # paho's own cap on QoS 1/2 messages in flight; callers keep below the broker's
    protocol: str = "auto"  # "auto" (MQTT 5 if the broker speaks it), "5" or "3.1.1"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"MQTT protocol must be one of {sorted(PROTOCOLS)}, not {self.protocol!r}")

    @classmethod
    def from_url(cls, url: str, **kw: object) -> "BrokerSettings":
        """Parses ``mqtt://host:port`` (or ``mqtts://`` for TLS); user:password in the URL are honoured."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ValueError(f"broker URL {url!r} must look like mqtt://host:port or mqtts://host:port")
        default_port, tls = SCHEMES[parts.scheme]
        fields = {"host": parts.hostname, "port": parts.port or default_port,
                  "tls": tls or bool(kw.get("tls_ca")) or bool(kw.get("tls_cert"))}
        if parts.username:
            fields["username"], fields["password"] = parts.username, parts.password
        fields.update({k: v for k, v in kw.items() if v is not None})
        return cls(**fields)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class BrokerLimits:
    """What the broker told us when we connected."""

    protocol: int  # what the data path speaks: mqtt.MQTTv5 or mqtt.MQTTv311
    receive_maximum: int | None  # QoS 1/2 messages in flight per client; None = not announced (3.1.1)

    @property
    def name(self) -> str:
        limit = "no limit announced" if self.receive_maximum is None else f"Receive Maximum {self.receive_maximum}"
        return f"{'MQTT 5' if self.protocol == mqtt.MQTTv5 else 'MQTT 3.1.1'} ({limit})"

    def inflight(self, wanted: int) -> int:
        """How many QoS 1/2 messages a client may keep in flight: its wish, within the broker's limit."""
        return max(1, min(wanted, self.receive_maximum or DEFAULT_INFLIGHT))


def _configure(client: mqtt.Client, settings: BrokerSettings) -> None:
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        client.tls_set(ca_certs=settings.tls_ca, certfile=settings.tls_cert, keyfile=settings.tls_key,
                       cert_reqs=ssl.CERT_REQUIRED)


def negotiate(settings: BrokerSettings, timeout_s: float | None = 10.0) -> BrokerLimits:
    """Which protocol to speak and the broker's Receive Maximum: one short MQTT 5 probe connection
    (clean start, no session kept), unless the settings fix the protocol to 3.1.1. A broker that is not
    listening yet is retried with the reconnect back-off until timeout_s (None: for ever)."""
    if settings.protocol == "3.1.1":
        return BrokerLimits(mqtt.MQTTv311, None)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    delay = settings.reconnect_min_s
    while True:
        try:
            return _probe(settings, 5.0 if deadline is None else max(0.5, deadline - time.monotonic()))
        except ConnectionRefusedError:
            raise
        except ConnectionError as e:
            if deadline is not None and time.monotonic() + delay > deadline:
                raise
            log.warning("%s; retrying in %.1f s", e, delay)
            time.sleep(delay)
            delay = min(2 * delay, settings.reconnect_max_s)


def _probe(settings: BrokerSettings, timeout_s: float) -> BrokerLimits:
    done = threading.Event()
    answer: dict[str, object] = {}

    def on_connect(client: mqtt.Client, userdata: object, flags: object, reason: mqtt.ReasonCode,
                   props: Properties | None) -> None:
        answer["reason"], answer["props"] = reason, props
        done.set()

    def on_disconnect(*_: object) -> None:
        done.set()

    probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    _configure(probe, settings)
    probe.on_connect, probe.on_disconnect = on_connect, on_disconnect
    try:
        probe.connect(settings.host, settings.port, keepalive=max(5, settings.keepalive_s))
    except ssl.SSLError as e:  # a certificate that does not verify will not verify on a retry either
        raise ConnectionRefusedError(f"TLS with the broker at {settings.url} failed: {e}") from None
    except OSError as e:
        raise ConnectionError(f"no MQTT broker at {settings.url}: {e}") from None
    probe.loop_start()
    try:
        if not done.wait(min(timeout_s, PROBE_WAIT_S)):
            # Connected, but no CONNACK: amqtt with authentication or TLS drops an MQTT 5 CONNECT without
            # an answer. A broker that is there but silent to MQTT 5 gets MQTT 3.1.1.
            log.info("%s did not answer an MQTT 5 CONNECT in %.0f s: using MQTT 3.1.1", settings.url, PROBE_WAIT_S)
            return BrokerLimits(mqtt.MQTTv311, None)
    finally:
        probe.disconnect()
        probe.loop_stop()
    reason = answer.get("reason")
    data = mqtt.MQTTv5 if settings.protocol == "5" else mqtt.MQTTv311
    if isinstance(reason, mqtt.ReasonCode) and reason.value in (0x86, 0x87):  # bad credentials / not authorized
        raise PermissionError(f"the broker at {settings.url} refused the credentials: {reason}")
    if isinstance(reason, mqtt.ReasonCode) and not reason.is_failure:
        props = answer.get("props")
        limit = getattr(props, "ReceiveMaximum", None)
        return BrokerLimits(data, int(limit) if limit else 65535)
    if settings.protocol == "5":
        raise ConnectionError(f"the broker at {settings.url} refused MQTT 5: {reason}")
    # Refused as a protocol version (amqtt), or the connection was dropped: MQTT 3.1.1. Bad credentials
    # show up again, with their own reason, on the real connection.
    log.info("%s does not speak MQTT 5 (%s): using MQTT 3.1.1", settings.url, reason or "connection closed")
    return BrokerLimits(mqtt.MQTTv311, None)


def _no_delay(client: mqtt.Client, userdata: object, sock: socket.socket) -> None:
    """paho leaves Nagle's algorithm on. A QoS 2 exchange is small packets both ways: a PUBREL queued
    behind an unacknowledged PUBLISH waits for the broker's delayed ACK, 40 ms on Linux, so every clip
    cost 45 ms of round trip with one in flight (36 s for 800 clips; 2 s with 20 in flight)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux


def ack_now(client: mqtt.Client) -> None:
    """Acknowledges what has arrived at once instead of after Linux's delayed-ACK timer (40 ms). A stock
    mosquitto leaves Nagle's algorithm on (set_tcp_nodelay false): its second small packet to a client
    (the second worker's vote on a clip) waits for the ACK of the first, and a client that has nothing
    to send back (votes are QoS 0) delays that ACK. The kernel leaves quick-ACK mode by itself, so
    callers set it again on each message they receive."""
    sock = client.socket()
    if _QUICKACK is not None and sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except OSError:
            pass


def make_client(settings: BrokerSettings, client_id: str, persistent: bool = True,
                limits: BrokerLimits | None = None) -> mqtt.Client:
    """A configured, not yet connected client in the negotiated protocol (3.1.1 if ``limits`` is None).
    Callers set callbacks and the will, then ``connect``."""
    protocol = limits.protocol if limits else mqtt.MQTTv311
    if protocol == mqtt.MQTTv5:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    else:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent,
                             protocol=protocol)
    client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
    client.max_inflight_messages_set(limits.inflight(settings.max_inflight) if limits else settings.max_inflight)
    client.on_socket_open = _no_delay
    _configure(client, settings)
    return client


def connect(client: mqtt.Client, settings: BrokerSettings, persistent: bool = True) -> None:
    """Starts the network thread; paho keeps reconnecting on its own until loop_stop(). ``persistent``
    must match make_client's."""
    if client.protocol == mqtt.MQTTv5:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S if persistent else 0
        client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s,
                             clean_start=not persistent, properties=props)
    else:
        client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s)
    client.loop_start()
