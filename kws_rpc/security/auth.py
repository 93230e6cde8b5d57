"""Who may call, and how often: bearer tokens and a per-client rate limit, shared by the gRPC interceptor
(``kws_rpc.serving.grpc_auth``) and the gateway's middleware (``kws_rpc.serving.http_auth``). No transport is imported.

Tokens come from a file (``--token-file`` / ``KWS_TOKEN_FILE``) or ``KWS_TOKENS``: one per line (or, in
the variable, separated by commas), each ``name:token`` or a bare token without ``:`` (named ``token-N``,
N its line); ``#`` starts a comment. Names appear in logs and rate-limit keys; tokens never do.
Comparison is constant-time (``hmac.compare_digest``) against every token, so neither timing nor the
answer says which part was wrong. The rate limit is a token bucket per client: the token's name when auth is on, else the peer's
address. Loopback peers are exempt unless asked (``--rate-limit-loopback``): benchmarks and the co-hosted
gateway hammer the server from there.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import hmac
import ipaddress
import math
import os
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path

from kws_rpc.errors import KwsError, RateLimited, Unauthenticated

ENV_TOKENS, ENV_TOKEN_FILE, ENV_TOKEN = "KWS_TOKENS", "KWS_TOKEN_FILE", "KWS_TOKEN"
UNAUTHENTICATED = "authentication required: send a valid bearer token (authorization: Bearer <token>)"
MIN_TOKEN_CHARS = 16
DEFAULT_RATE, DEFAULT_BURST = 200.0, 400  # requests/s and bucket size per client; rate 0 = off
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: valid in an HTTP header and in gRPC metadata


class TokenStore:
    """Named bearer tokens. ``repr`` names the clients, never the tokens."""

    def __init__(self, tokens: dict[str, str]) -> None:
        if not tokens:
            raise ValueError("no tokens: an empty token file would lock everyone out")
        for name, token in tokens.items():
            if not _NAME.match(name):
                raise ValueError(f"bad token name {name[:40]!r}: letters, digits, '_', '.', '@', '-'")
            if len(token) < MIN_TOKEN_CHARS or not _TOKEN.match(token):
                raise ValueError(f"token {name!r} must be at least {MIN_TOKEN_CHARS} visible ASCII characters "
                                 "without spaces (kws-token makes one)")
        if len(set(tokens.values())) != len(tokens):
            raise ValueError("two names share a token: each client needs its own")
        self._tokens = [(name, token.encode()) for name, token in tokens.items()]

    @classmethod
    def parse(cls, entries: Iterable[str], source: str) -> TokenStore:
        tokens: dict[str, str] = {}
        for n, raw in enumerate(entries, 1):
            entry = raw.split("#", 1)[0].strip()
            if not entry:
                continue
            name, sep, token = (part.strip() for part in entry.partition(":"))
            if not sep:
                name, token = f"token-{n}", entry
            if name in tokens:
                raise ValueError(f"{source}: the name {name[:40]!r} appears twice")
            tokens[name] = token
        try:
            return cls(tokens)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: Path) -> TokenStore:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the token file {path}: {e}") from None
        return cls.parse(text.splitlines(), str(path))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._tokens]

    def authenticate(self, authorization: str | None) -> str | None:
        """The client's name for an ``Authorization`` value (``Bearer <token>``), else None."""
        token = bearer(authorization)
        if token is None:
            return None
        found = None
        for name, known in self._tokens:  # every token is compared: the time does not say which matched
            if hmac.compare_digest(known, token):
                found = name
        return found

    def __repr__(self) -> str:
        return f"TokenStore({', '.join(self.names)})"


def bearer(authorization: str | bytes | None) -> bytes | None:
    if isinstance(authorization, str):
        authorization = authorization.encode("utf-8", "replace")
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" and token.strip() else None


class RateLimiter:
    """A token bucket per key: ``rate`` requests/s sustained, ``burst`` at once. Thread-safe. Keeps at
    most ``max_keys`` buckets (the least recently used go; a forgotten bucket starts full again)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a rate limit needs rate > 0 and burst >= 1, got {rate}, {burst}")
        self.rate, self.burst, self._clock, self._max_keys = rate, burst, clock, max_keys
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float:
        """0 if a request from ``key`` may pass now (and counts it), else the seconds until one may."""
        with self._lock:
            now = self._clock()
            level, last = self._buckets.pop(key, (float(self.burst), now))
            level = min(float(self.burst), level + (now - last) * self.rate)
            wait = 0.0 if level >= 1 else (1 - level) / self.rate
            self._buckets[key] = (level - 1 if wait == 0 else level, now)
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
            return wait


def peer_host(peer: str) -> str:
    """The address in a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:%5B::1%5D:5``, ``unix:...``) or an
    HTTP client host; ``unix`` for a Unix socket."""
    kind, sep, rest = peer.partition(":")
    if not sep:
        return peer
    if kind == "unix":
        return "unix"
    if kind in ("ipv4", "ipv6"):
        return urllib.parse.unquote(rest).rsplit(":", 1)[0].strip("[]")
    return peer


@functools.lru_cache(maxsize=1024)  # asked once per call; clients are few
def is_loopback(host: str) -> bool:
    if host in ("localhost", "unix"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    tokens: TokenStore | None = None  # None = no authentication
    rate: float = DEFAULT_RATE  # requests/s per client; 0 = no rate limit
    burst: int = DEFAULT_BURST
    rate_limit_loopback: bool = False  # loopback peers are exempt unless True
    protect_introspection: bool = False  # also require a token for /docs, /openapi.json, reflection, /metrics

    def __post_init__(self) -> None:
        if self.rate < 0 or (self.rate > 0 and self.burst < 1):
            raise ValueError(f"--rate-limit must be >= 0 and --rate-burst >= 1, got {self.rate}, {self.burst}")


class Guard:
    """Admits or refuses one call (the gRPC interceptor and the gateway middleware share it). The
    co-hosted gateway calls the handlers in process, so each HTTP request is checked and counted once."""

    def __init__(self, config: AuthConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.limiter = RateLimiter(config.rate, config.burst, clock) if config.rate > 0 else None

    def admit(self, authorization: str | None, peer: str, *, needs_token: bool = True, limited: bool = True) -> str:
        """The client's name (token name or peer address); raises Unauthenticated or RateLimited."""
        name = None
        if self.config.tokens is not None and needs_token:
            name = self.config.tokens.authenticate(authorization)
            if name is None:
                raise Unauthenticated(UNAUTHENTICATED)
        host = peer_host(peer)
        if limited and self.limiter is not None and (self.config.rate_limit_loopback or not is_loopback(host)):
            wait = self.limiter.acquire(name or host)
            if wait > 0:
                raise RateLimited(f"rate limit exceeded: {self.config.rate:g} requests/s (burst {self.config.burst}) "
                                  f"per client; retry in {wait:.3f} s", wait)
        return name or host


def retry_after_header(seconds: float) -> str:
    """HTTP's Retry-After is whole seconds: round up, at least 1."""
    return str(max(1, math.ceil(seconds)))


def refusal_headers(e: KwsError) -> list[tuple[str, str]]:
    """The HTTP headers an error answer carries: Retry-After on a rate limit, WWW-Authenticate on a 401."""
    if isinstance(e, RateLimited):
        return [("retry-after", retry_after_header(e.retry_after_s))]
    if e.http_status == 401:
        return [("www-authenticate", "Bearer")]
    return []


def add_server_args(ap: argparse.ArgumentParser, env: dict[str, str] | None = None) -> None:
    env = dict(os.environ) if env is None else env
    g = ap.add_argument_group("authentication and rate limit")
    g.add_argument("--token-file", default=env.get(ENV_TOKEN_FILE),
                   help=f"require a bearer token from this file: one 'name:token' per line (${ENV_TOKEN_FILE}; "
                        f"${ENV_TOKENS} holds the same entries, comma-separated); default: no authentication")
    g.add_argument("--auth-introspection", action="store_true",
                   help="also require a token for /docs, /openapi.json, /metrics and gRPC reflection "
                        "(health endpoints always stay open)")
    g.add_argument("--rate-limit", type=float, default=DEFAULT_RATE,
                   help="requests/s per client (token name, else address); over it: HTTP 429 with Retry-After, "
                        "gRPC RESOURCE_EXHAUSTED (default %(default)s; 0 = off)")
    g.add_argument("--rate-burst", type=int, default=DEFAULT_BURST,
                   help="requests a client may send at once (default %(default)s)")
    g.add_argument("--rate-limit-loopback", action="store_true",
                   help="rate-limit clients on loopback too (by default they are exempt: benchmarks, local tools)")


def auth_config_from_args(a: argparse.Namespace, env: dict[str, str] | None = None) -> AuthConfig:
    env = dict(os.environ) if env is None else env
    if a.token_file and env.get(ENV_TOKENS):
        raise ValueError(f"give tokens either in a file (--token-file/${ENV_TOKEN_FILE}) or in ${ENV_TOKENS}, not both")
    tokens = None
    if a.token_file:
        tokens = TokenStore.load(Path(a.token_file))
    elif env.get(ENV_TOKENS):
        tokens = TokenStore.parse(env[ENV_TOKENS].split(","), f"${ENV_TOKENS}")
    return AuthConfig(tokens, a.rate_limit, a.rate_burst, a.rate_limit_loopback, a.auth_introspection)


def client_token(flag: str | None, env: dict[str, str] | None = None) -> str | None:
    """The edge's token: ``--token``, else ``$KWS_TOKEN``; ``@path`` reads it from a file."""
    env = dict(os.environ) if env is None else env
    value = flag or env.get(ENV_TOKEN) or None
    if value and value.startswith("@"):
        value = Path(value[1:]).read_text().strip()
    if value is not None and not _TOKEN.match(value):
        raise ValueError("the token must be visible ASCII without spaces")
    return value


def main(argv: list[str] | None = None) -> None:
    """`kws-token NAME`: prints a new random token line ``NAME:TOKEN`` for a server's token file."""
    ap = argparse.ArgumentParser(prog="kws-token", description="Print a new random bearer token line "
                                 "'NAME:TOKEN' for a server's token file (--token-file, KWS_TOKEN_FILE); give "
                                 "the client the TOKEN part (--token or KWS_TOKEN).")
    ap.add_argument("name", nargs="?", default="client", help="the client's name (default %(default)s)")
    name = ap.parse_args(argv).name
    if not _NAME.match(name):
        raise SystemExit(f"bad name {name[:40]!r}: letters, digits, '_', '.', '@', '-'")
    print(f"{name}:{secrets.token_urlsafe(32)}")


if __name__ == "__main__":
    main()
