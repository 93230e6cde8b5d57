"""The embedded broker, for demos and tests, on loopback by default.

``EmbeddedBroker`` runs amqtt (MQTT 3.1.1) in this process, in its own thread with its own asyncio loop,
so the one-command demo (``make coop``) needs no installed broker. ``kws-broker [--port N]`` serves one
until Ctrl-C. Production uses mosquitto (deploy/); the tests run a real one with
``tests.support.mosquitto.Mosquitto``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import socket
import tempfile
import threading
from pathlib import Path

from kws_rpc.mqtt import acl

log = logging.getLogger("kws_rpc.mqtt.broker")  # not __name__: run with -m, that is __main__
LOOPBACK = "127.0.0.1"


def _free_port(host: str) -> int:
    """A port the OS reports free now (a tiny race remains; fine on loopback)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    certfile: str
    keyfile: str
    cafile: str | None = None  # to verify client certificates (amqtt asks for them but does not require them)


class EmbeddedBroker:
    """amqtt in a daemon thread. start() returns once it listens; stop() shuts it down and joins.

    With ``users`` (name -> password) it refuses anonymous clients and applies kws's ACL
    (kws_rpc.mqtt.acl): ``coordinator`` publishes clips; ``workers`` (default: every other user) each
    act as the worker named after itself; any other user may do nothing. What amqtt 0.12 cannot do that mosquitto does: ``%u`` patterns (rules are spelled out per
    user, so a new worker needs a restart), and checks on delivery (only publish and subscribe are
    checked). With ``tls`` the listener speaks TLS only.
    """

    # amqtt speaks MQTT 3.1.1 only. Participants that know they face this broker say so (BrokerSettings'
    # protocol) instead of probing with MQTT 5, which amqtt logs as an invalid connection.
    PROTOCOL = "3.1.1"

    def __init__(self, host: str = LOOPBACK, port: int = 0, users: dict[str, str] | None = None,
                 coordinator: str = "coop", workers: tuple[str, ...] | None = None,
                 tls: TlsFiles | None = None) -> None:
        self.host = host
        self.port = port or _free_port(host)
        self.users, self.coordinator, self.workers, self.tls = users, coordinator, workers, tls
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: object | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def _config(self) -> dict:
        # Bind explicitly (amqtt's default is 0.0.0.0:1883); only the auth (and ACL) plugins: the $SYS and
        # packet-logging plugins cost time per message and are of no use here.
        listener: dict = {"type": "tcp", "bind": f"{self.host}:{self.port}"}
        if self.tls:
            listener.update(ssl=True, certfile=self.tls.certfile, keyfile=self.tls.keyfile)
            if self.tls.cafile:
                listener["cafile"] = self.tls.cafile
        if not self.users:
            plugins = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
        else:
            from pwdlib import PasswordHash
            from pwdlib.hashers.argon2 import Argon2Hasher

            hasher = PasswordHash((Argon2Hasher(),))
            passwd = Path(tempfile.mkdtemp(prefix="kws-amqtt-")) / "passwd"
            passwd.write_text("".join(f"{u}:{hasher.hash(p)}\n" for u, p in self.users.items()))
            passwd.chmod(0o600)
            workers = self.workers if self.workers is not None else [u for u in self.users if u != self.coordinator]
            plugins = {
                "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(passwd)},
                "amqtt.plugins.topic_checking.TopicAccessControlListPlugin": {
                    "publish_acl": acl.publish_rules(self.coordinator, workers),
                    "acl": acl.subscribe_rules(self.coordinator, workers)},
            }
        return {"listeners": {"default": listener}, "plugins": plugins}

    def _run(self) -> None:
        from amqtt.broker import Broker

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            async def boot() -> None:
                self._broker = Broker(self._config(), loop=loop)
                await self._broker.start()

            loop.run_until_complete(boot())
        except BaseException as e:  # reported to start()'s caller
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        loop.close()

    def start(self, timeout_s: float = 10.0) -> "EmbeddedBroker":
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.WARNING))
        self._thread = threading.Thread(target=self._run, name="amqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"embedded broker did not start in {timeout_s} s")
        if self._error is not None:
            raise RuntimeError(f"embedded broker failed to start on {self.url}: {self._error}") from self._error
        log.info("embedded amqtt broker listening on %s", self.url)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)  # type: ignore[union-attr]
        try:
            fut.result(timeout_s)
        except Exception as e:  # shutting down anyway
            log.warning("embedded broker shutdown: %s", e)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Serve an embedded amqtt broker (MQTT 3.1.1) until Ctrl-C.")
    p.add_argument("--host", default=LOOPBACK, help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=0, help="TCP port; 0 = a free one, printed")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    broker = EmbeddedBroker(args.host, args.port).start()
    print(f"broker listening on {broker.url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
