"""The HTTP side of ``kws_rpc.security.auth``: an ASGI middleware for the gateway and a WSGI wrapper for /metrics.

``/healthz``, ``/readyz`` and the V2 health routes are always open. ``/docs``, ``/openapi.json`` (and
/metrics) need a token only with ``protect_introspection`` and are not rate limited; every other path needs
a token when auth is on and counts against the client's rate limit. Refusals answer the gateway's JSON error shape (on /v2
paths, the V2 protocol's ``{"error": message}``): 401 with ``WWW-Authenticate: Bearer`` or 429 with
``Retry-After``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from kws_rpc.errors import KwsError
from kws_rpc.security.auth import Guard, refusal_headers
from kws_rpc.serving import v2_rest

OPEN_PATHS = frozenset({"/healthz", "/readyz", *v2_rest.OPEN_PATHS})
INTROSPECTION_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/metrics"})


def _refusal(e: KwsError, path: str = "") -> tuple[int, list[tuple[str, str]], bytes]:
    error = v2_rest.error_body(e) if v2_rest.is_v2(path) else {
        "error": {"code": e.http_status, "status": e.grpc_code, "message": str(e)}}
    body = json.dumps(error).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(body))), *refusal_headers(e)]
    return e.http_status, headers, body


def _check(guard: Guard, path: str, authorization: str | None, peer: str) -> KwsError | None:
    if path in OPEN_PATHS:
        return None
    introspection = path in INTROSPECTION_PATHS
    try:
        guard.admit(authorization, peer, needs_token=not introspection or guard.config.protect_introspection,
                    limited=not introspection)
    except KwsError as e:
        return e
    return None


class GuardMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): a refusal is answered before the body is read."""

    def __init__(self, app: Any, guard: Guard) -> None:
        self.app, self.guard = app, guard

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        auth = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"), None)
        client = scope.get("client")
        error = _check(self.guard, scope.get("path", ""), auth, client[0] if client else "")
        if error is None:
            await self.app(scope, receive, send)
            return
        status, headers, body = _refusal(error, scope.get("path", ""))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in headers]})
        await send({"type": "http.response.body", "body": body})


def wsgi_guard(app: Callable[..., Iterable[bytes]], guard: Guard) -> Callable[..., Iterable[bytes]]:
    """The same checks around a WSGI app (prometheus_client's /metrics)."""
    reasons = {401: "Unauthorized", 429: "Too Many Requests"}

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        error = _check(guard, "/metrics", environ.get("HTTP_AUTHORIZATION"), environ.get("REMOTE_ADDR", ""))
        if error is None:
            return app(environ, start_response)
        status, headers, body = _refusal(error)
        start_response(f"{status} {reasons.get(status, 'Error')}", headers)
        return [body]

    return guarded
