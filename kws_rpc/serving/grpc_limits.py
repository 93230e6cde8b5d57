"""Streams cannot pile up on the gRPC server: a cap on open streams and an idle timeout.

The asyncio server holds no thread per call, but an open stream still holds its connection's buffers
and a slot in ``maximum_concurrent_rpcs`` (``--max-inflight``) for as long as the client keeps it open.
``StreamGate`` admits at most ``max_streams`` request streams at once (the next is RESOURCE_EXHAUSTED at
once, with a message) and ends a stream that sends no request for ``idle_s`` with DEADLINE_EXCEEDED.
The servicer's ``PredictStream`` goes through it; unary calls never touch it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from kws_rpc.wire.service import ERROR_KEY

log = logging.getLogger(__name__)


class StreamGate:
    def __init__(self, max_streams: int, idle_s: float, count: Callable[[str, str, str], None]) -> None:
        """``count(method, code, error)`` records a refusal in the server's metrics."""
        self.max_streams, self.idle_s, self._count = max_streams, idle_s, count
        self.open = 0  # streams admitted and not yet ended (the event loop's thread only: no lock)

    @contextlib.asynccontextmanager
    async def admit(self, context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[None]:
        if self.open >= self.max_streams:
            log.debug("%s refused: %d streams open", method, self.max_streams)
            self._count(method, "RESOURCE_EXHAUSTED", "Overloaded")
            context.set_trailing_metadata(((ERROR_KEY, "Overloaded"),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{self.max_streams} streams are open, this server's limit (--max-streams): retry "
                                "later, or send unary Predict calls")
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1

    async def requests(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext,
                       method: str) -> AsyncIterator[Any]:
        """``requests``, ending the call if the next one takes longer than ``idle_s``."""
        iterator = aiter(requests)
        while True:
            try:
                item = await asyncio.wait_for(anext(iterator), self.idle_s)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                log.info("%s from %s: no request for %g s, ended", method, context.peer(), self.idle_s)
                self._count(method, "DEADLINE_EXCEEDED", "RequestTimeout")
                context.set_trailing_metadata(((ERROR_KEY, "RequestTimeout"),))
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"no request for {self.idle_s:g} s: idle streams are ended (--stream-idle-s)")
            yield item
