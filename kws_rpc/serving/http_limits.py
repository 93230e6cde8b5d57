"""Slow or silent HTTP clients cannot hold the gateway's connections.

uvicorn's h11 protocol has a keep-alive timeout but no deadline for a request's head or body: a
connection that sends half a request is held for as long as the client likes (300 of them were held
indefinitely). ``H11WithDeadlines`` closes a connection whose request head is not complete within
``header_timeout_s`` (of opening, or of its previous response), or whose body is not complete within
``body_timeout_s`` of its head plus a second. The gateway itself answers a body that is late with 408
(``read_body``) a second before this backstop, which catches bodies the app never reads. Closes are
logged at INFO: a slow client is not a server error.
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


class H11WithDeadlines(H11Protocol):
    header_timeout_s = Limits.http_header_timeout_s
    body_timeout_s = Limits.http_body_timeout_s

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._phase: Any = self.conn.their_state
        self._since = self.loop.time()
        self._timer: asyncio.TimerHandle | None = self.loop.call_later(self.header_timeout_s, self._check)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not self._phase:  # a head arrived, a body ended, a new cycle began
            self._phase, self._since = self.conn.their_state, self.loop.time()

    def _limit(self) -> float | None:
        if self._phase is h11.IDLE:
            return self.header_timeout_s
        if self._phase is h11.SEND_BODY:
            return self.body_timeout_s + BACKSTOP_S
        return None  # the request is in: the app answers within its own timeouts

    def _check(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        limit, waited = self._limit(), self.loop.time() - self._since
        if limit is not None and waited >= limit:
            what = "request head" if self._phase is h11.IDLE else "request body"
            log.info("closed a connection from %s: no complete %s after %.1f s", _peer(self.client), what, waited)
            self.transport.close()
            return
        self._timer = self.loop.call_later(max(0.05, (limit or self.header_timeout_s) - waited), self._check)


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


def uvicorn_options(limits: Limits) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` / ``uvicorn.run`` that apply ``limits``."""
    protocol = type("H11WithDeadlines", (H11WithDeadlines,), {"header_timeout_s": limits.http_header_timeout_s,
                                                             "body_timeout_s": limits.http_body_timeout_s})
    return {"http": protocol, "timeout_keep_alive": limits.http_keep_alive_s}
