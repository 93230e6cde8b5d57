"""`kws-edge listen --mqtt`: listening events for a home-automation system: each one published over MQTT as it is emitted.

Topic ``kws/<device>/events``, QoS 1, the JSON object `kws-edge listen` prints. The broker flags are the
workers' (kws_rpc.mqtt.options), named --mqtt-* here. paho reconnects and queues on its own, so a broker
that goes away costs nothing until the end: events still unacknowledged then are counted as lost.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from kws_rpc.mqtt.connection import BrokerSettings, connect, make_client

log = logging.getLogger("kws.edge.events")


def events_topic(device: str) -> str:
    return f"kws/{device}/events"


class EventPublisher:
    def __init__(self, settings: BrokerSettings, device: str) -> None:
        self.topic = events_topic(device)
        self.client = make_client(settings, f"kws-listen-{device}", persistent=False)
        self.client.on_connect = lambda *_: log.info("publishing events to %s %s", settings.url, self.topic)
        self._sent: list[int] = []  # message ids, and those the broker acknowledged (PUBACK)
        self._acked: set[int] = set()
        self.client.on_publish = lambda _c, _u, mid, *_: self._acked.add(mid)
        connect(self.client, settings, persistent=False)

    def __call__(self, event: dict[str, Any]) -> None:
        # paho queues it while the broker is away and sends it when it is back
        self._sent.append(self.client.publish(self.topic, json.dumps(event), qos=1).mid)

    def unacknowledged(self) -> int:
        return len(set(self._sent) - self._acked)

    def close(self, timeout_s: float = 5.0) -> int:
        """Waits up to timeout_s for the broker to acknowledge every event; returns how many it did not."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.unacknowledged():
            time.sleep(0.05)
        self.client.disconnect()
        self.client.loop_stop()
        lost = self.unacknowledged()
        if lost:
            log.error("%d of %d events were not acknowledged by the broker", lost, len(self._sent))
        return lost
