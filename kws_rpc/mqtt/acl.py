"""Who may publish and subscribe to what: the rules of deploy/mosquitto.acl, spelled out per user for
brokers without mosquitto's ``%u`` patterns (the embedded amqtt broker).

- the coordinator (the coop client) alone publishes clips and subscribes to votes and statuses;
- a worker publishes only its own status (retained, and its last will) and its own votes, and
  subscribes to clips and to its own status;
- anybody else may do nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

ANY = "+"  # any deployment


def publish_rules(coordinator: str, workers: Iterable[str]) -> dict[str, list[str]]:
    rules = {coordinator: [f"kws/{ANY}/clips"]}
    for w in workers:
        rules[w] = [f"kws/{ANY}/workers/{w}/status", f"kws/{ANY}/predictions/{w}"]
    return rules


def subscribe_rules(coordinator: str, workers: Iterable[str]) -> dict[str, list[str]]:
    rules = {coordinator: [f"kws/{ANY}/predictions/{ANY}", f"kws/{ANY}/workers/{ANY}/status"]}
    for w in workers:
        rules[w] = [f"kws/{ANY}/clips", f"kws/{ANY}/workers/{w}/status"]
    return rules
