"""Slow or silent HTTP clients cannot hold the gateway's connections.

uvicorn's protocols have a keep-alive timeout but no deadline for a request's head or body: a
connection that sends half a request is held for as long as the client likes (300 of them were held
indefinitely). ``Deadlines`` closes a connection whose request head is not complete within
``header_timeout_s`` (of opening, or of its previous response), or whose body is not complete within
``body_timeout_s`` of its head plus a second. The gateway itself answers a body that is late with 408
(``read_body``) a second before this backstop, which catches bodies the app never reads. Closes are
logged at INFO: a slow client is not a server error.

It rides on uvicorn's httptools protocol (the C parser: the gateway's CPU per request) when httptools
is installed, as the server extra installs it, and on the pure-Python h11 protocol otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from kws_rpc.serving.limits import Limits

log = logging.getLogger(__name__)
BACKSTOP_S = 1.0  # the app's own 408 comes first


HEAD, BODY = "head", "body"  # what a connection is waiting for; None: the app is answering


class Deadlines:
    """The deadline logic, a mixin before a uvicorn protocol: armed with the connection, fed by the
    protocol subclass through ``_enter``."""

    header_timeout_s = Limits.http_header_timeout_s
    body_timeout_s = Limits.http_body_timeout_s
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    client: tuple[str, int] | None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._phase: str | None = HEAD
        self._since = self.loop.time()
        self._timer: asyncio.TimerHandle | None = self.loop.call_later(self.header_timeout_s, self._check)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)  # type: ignore[misc]

    def _enter(self, phase: str | None) -> None:
        self._phase, self._since = phase, self.loop.time()

    def _limit(self) -> float | None:
        if self._phase == HEAD:
            return self.header_timeout_s
        if self._phase == BODY:
            return self.body_timeout_s + BACKSTOP_S
        return None  # the request is in: the app answers within its own timeouts

    def _check(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        limit, waited = self._limit(), self.loop.time() - self._since
        if limit is not None and waited >= limit:
            what = "request head" if self._phase == HEAD else "request body"
            log.info("closed a connection from %s: no complete %s after %.1f s", _peer(self.client), what, waited)
            self.transport.close()
            return
        self._timer = self.loop.call_later(max(0.05, (limit or self.header_timeout_s) - waited), self._check)


class H11WithDeadlines(Deadlines, H11Protocol):
    _PHASES = {h11.IDLE: HEAD, h11.SEND_BODY: BODY}

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._state: Any = self.conn.their_state

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not self._state:  # a head arrived, a body ended, a new cycle began
            self._state = self.conn.their_state
            self._enter(self._PHASES.get(self._state))


def _httptools_protocol() -> type | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is not installed
        return None

    class HttpToolsWithDeadlines(Deadlines, HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._enter(BODY)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            answered = self.cycle is None or self.cycle.response_complete  # refused before its body was read
            self._enter(HEAD if answered else None)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._enter(HEAD)  # the next request's head is due within header_timeout_s of this response

    return HttpToolsWithDeadlines


HttpToolsWithDeadlines = _httptools_protocol()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


def uvicorn_options(limits: Limits) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` / ``uvicorn.run`` that apply ``limits``."""
    base: type = HttpToolsWithDeadlines or H11WithDeadlines
    protocol = type(base.__name__, (base,), {"header_timeout_s": limits.http_header_timeout_s,
                                             "body_timeout_s": limits.http_body_timeout_s})
    return {"http": protocol, "timeout_keep_alive": limits.http_keep_alive_s}
