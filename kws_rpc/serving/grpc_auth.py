"""The gRPC side of ``kws_rpc.security.auth``: a server interceptor that checks the ``authorization`` metadata and
the rate limit before a call reaches its servicer.

Health (``grpc.health.v1``) is always open; reflection needs a token only with ``protect_introspection``
and is not rate limited. A refused call ends with UNAUTHENTICATED or RESOURCE_EXHAUSTED, the
``kws-error`` trailer naming the domain error (as the servicer does) and, for the rate limit, a
``retry-after`` trailer in seconds.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from kws_rpc.errors import KwsError, RateLimited
from kws_rpc.security.auth import Guard, is_loopback
from kws_rpc.serving.metrics import Metrics
from kws_rpc.wire.service import ERROR_KEY

log = logging.getLogger(__name__)

OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})
INTROSPECTION = frozenset({"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"})
RETRY_AFTER_KEY = "retry-after"


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Installed only when there is something to check (``needed``): an open server pays nothing."""

    def __init__(self, guard: Guard, metrics: Metrics | None = None) -> None:
        self.guard, self.metrics = guard, metrics

    @staticmethod
    def needed(guard: Guard, host: str) -> bool:
        """Tokens to check, or a rate limit that can apply to someone: a server bound to loopback only has
        only loopback peers, exempt unless --rate-limit-loopback (the interceptor costs ~0.04 ms a call)."""
        limited = guard.limiter is not None and (guard.config.rate_limit_loopback or not is_loopback(host))
        return guard.config.tokens is not None or limited

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        service, _, method = details.method.lstrip("/").partition("/")
        if handler is None or service in OPEN_SERVICES:
            return handler
        if service in INTROSPECTION:
            if not (self.guard.config.tokens is not None and self.guard.config.protect_introspection):
                return handler
            return _wrap(handler, lambda ctx: self._check(ctx, method, limited=False))
        return _wrap(handler, lambda ctx: self._check(ctx, method, limited=True))

    async def _check(self, context: grpc.aio.ServicerContext, method: str, limited: bool) -> None:
        auth = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)
        try:
            self.guard.admit(auth, context.peer(), limited=limited)
        except KwsError as e:
            trailers = [(ERROR_KEY, type(e).__name__)]
            if isinstance(e, RateLimited):
                trailers.append((RETRY_AFTER_KEY, f"{e.retry_after_s:.3f}"))
                log.debug("%s from %s: %s", method, context.peer(), e)
            else:
                log.info("%s from %s refused: %s", method, context.peer(), type(e).__name__)
            if self.metrics is not None:
                self.metrics.refused(method, e.grpc_code, type(e).__name__)
            context.set_trailing_metadata(tuple(trailers))
            await context.abort(grpc.StatusCode[e.grpc_code], str(e))


def _wrap(handler: Any, check: Callable[[grpc.aio.ServicerContext], Awaitable[None]]) -> Any:
    """The same handler, with ``check`` awaited first in whichever of its four behaviours is set."""
    if handler.response_streaming:
        def guarded_stream(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await check(context)
                replies = behaviour(request, context)
                if hasattr(replies, "__aiter__"):  # an async generator; else a coroutine that writes itself
                    async for reply in replies:
                        yield reply
                else:
                    await replies
            return call
        guarded = guarded_stream
    else:
        def guarded_unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await check(context)
                return await behaviour(request, context)
            return call
        guarded = guarded_unary

    kind = {(False, False): "unary_unary", (False, True): "unary_stream", (True, False): "stream_unary",
            (True, True): "stream_stream"}[(handler.request_streaming, handler.response_streaming)]
    return handler._replace(**{kind: guarded(getattr(handler, kind))})
