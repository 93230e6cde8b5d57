"""TLS settings from certificate files, turned into what each library wants: gRPC credentials, uvicorn's
ssl arguments, an ``ssl.SSLContext`` (metrics) and requests' ``verify``/``cert``.

Servers take ``--tls-cert/--tls-key`` (their certificate) and ``--tls-ca`` (the CA whose client
certificates they accept: giving it turns on mutual TLS); clients take ``--tls-ca`` (the CA they trust
for the server) and ``--tls-cert/--tls-key`` (their own certificate, for mutual TLS). Each flag defaults
to its environment variable (``KWS_TLS_CERT``, ``KWS_TLS_KEY``, ``KWS_TLS_CA``, ``KWS_TLS_CLIENT_AUTH``),
read when ``main()`` builds its config, never at import.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kws_rpc.security.auth import AuthConfig

CLIENT_AUTH = ("required", "optional")  # with --tls-ca: a client without a certificate is refused / let in
ENV_CERT, ENV_KEY, ENV_CA, ENV_CLIENT_AUTH = "KWS_TLS_CERT", "KWS_TLS_KEY", "KWS_TLS_CA", "KWS_TLS_CLIENT_AUTH"


def _readable(path: Path, what: str) -> None:
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a file")
    try:
        path.open("rb").close()
    except OSError as e:
        raise ValueError(f"cannot read {what} {path}: {e.strerror}") from None


@dataclasses.dataclass(frozen=True)
class ServerTls:
    cert: Path  # PEM certificate (chain) the server presents
    key: Path  # its PEM private key
    ca: Path | None = None  # accept client certificates issued by this CA (mutual TLS); None = no client certs
    client_auth: str = "required"  # with ca: "required" refuses clients without a certificate

    def __post_init__(self) -> None:
        if self.client_auth not in CLIENT_AUTH:
            raise ValueError(f"--tls-client-auth must be one of {CLIENT_AUTH}, not {self.client_auth[:40]!r}")

    @property
    def mutual(self) -> bool:
        return self.ca is not None and self.client_auth == "required"

    def check(self) -> None:
        """Refuses unreadable files, bad PEM and a key that does not match the certificate, at startup
        (gRPC would only fail at the first handshake)."""
        _readable(self.cert, "--tls-cert")
        _readable(self.key, "--tls-key")
        if self.ca is not None:
            _readable(self.ca, "--tls-ca")
        try:
            self.ssl_context()
        except ssl.SSLError as e:
            files = ", ".join(str(p) for p in (self.cert, self.key, self.ca) if p is not None)
            raise ValueError(f"TLS files {files} are not a usable certificate, key and CA: {e}") from None

    def grpc_credentials(self) -> Any:
        import grpc

        ca = self.ca.read_bytes() if self.ca is not None else None
        return grpc.ssl_server_credentials([(self.key.read_bytes(), self.cert.read_bytes())],
                                           root_certificates=ca, require_client_auth=self.mutual)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        if self.ca is not None:
            ctx.load_verify_locations(cafile=str(self.ca))
            ctx.verify_mode = ssl.CERT_REQUIRED if self.mutual else ssl.CERT_OPTIONAL
        return ctx

    def uvicorn_kwargs(self) -> dict[str, Any]:
        """uvicorn.Config's ssl arguments."""
        kw: dict[str, Any] = {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key)}
        if self.ca is not None:
            kw |= {"ssl_ca_certs": str(self.ca),
                   "ssl_cert_reqs": ssl.CERT_REQUIRED if self.mutual else ssl.CERT_OPTIONAL}
        return kw


@dataclasses.dataclass(frozen=True)
class ClientTls:
    ca: Path | None = None  # trust servers certified by this CA; None = the system's (requests) or gRPC's roots
    cert: Path | None = None  # this client's certificate, for a server that asks for one (mutual TLS)
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both --tls-cert and --tls-key")

    def check(self) -> None:
        for path, what in ((self.ca, "--tls-ca"), (self.cert, "--tls-cert"), (self.key, "--tls-key")):
            if path is not None:
                _readable(path, what)

    def grpc_credentials(self) -> Any:
        import grpc

        def read(p: Path | None) -> bytes | None:
            return p.read_bytes() if p is not None else None

        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))

    def requests_kwargs(self) -> dict[str, Any]:
        """``verify`` and ``cert`` for a requests.Session."""
        return {"verify": str(self.ca) if self.ca is not None else True,
                "cert": (str(self.cert), str(self.key)) if self.cert is not None else None}


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def add_server_args(ap: argparse.ArgumentParser, env: dict[str, str] | None = None) -> None:
    env = dict(os.environ) if env is None else env
    g = ap.add_argument_group("TLS (each flag defaults to its environment variable)")
    g.add_argument("--tls-cert", default=env.get(ENV_CERT), help=f"server certificate, PEM (${ENV_CERT})")
    g.add_argument("--tls-key", default=env.get(ENV_KEY), help=f"its private key, PEM (${ENV_KEY})")
    g.add_argument("--tls-ca", default=env.get(ENV_CA),
                   help=f"accept client certificates issued by this CA, PEM: mutual TLS (${ENV_CA})")
    g.add_argument("--tls-client-auth", choices=CLIENT_AUTH, default=env.get(ENV_CLIENT_AUTH, "required"),
                   help=f"with --tls-ca: refuse clients without a certificate, or let them in "
                        f"(${ENV_CLIENT_AUTH}; default %(default)s)")


def server_tls_from_args(a: argparse.Namespace) -> ServerTls | None:
    """None when no TLS flag is given (plaintext); ValueError for an incomplete set."""
    if not (a.tls_cert or a.tls_key or a.tls_ca):
        return None
    if not (a.tls_cert and a.tls_key):
        raise ValueError("TLS needs the server's certificate and key: give both --tls-cert and --tls-key "
                         "(--tls-ca only says which client certificates to accept)")
    return ServerTls(Path(a.tls_cert), Path(a.tls_key), _path(a.tls_ca), a.tls_client_auth)


def add_client_args(ap: argparse.ArgumentParser, env: dict[str, str] | None = None) -> None:
    env = dict(os.environ) if env is None else env
    g = ap.add_argument_group("TLS (each flag defaults to its environment variable)")
    g.add_argument("--tls-ca", default=env.get(ENV_CA),
                   help=f"trust servers certified by this CA, PEM (${ENV_CA}); for gRPC, any --tls-* flag "
                        "turns TLS on; for REST, an https:// URL does")
    g.add_argument("--tls-cert", default=env.get(ENV_CERT),
                   help=f"client certificate for mutual TLS, PEM (${ENV_CERT})")
    g.add_argument("--tls-key", default=env.get(ENV_KEY), help=f"its private key, PEM (${ENV_KEY})")


def client_tls_from_args(a: argparse.Namespace) -> ClientTls | None:
    if not (a.tls_ca or a.tls_cert or a.tls_key):
        return None
    return ClientTls(_path(a.tls_ca), _path(a.tls_cert), _path(a.tls_key))


def check_exposure(host: str, tls: ServerTls | None, insecure: bool) -> None:
    """A server reachable from other machines speaks TLS unless ``--insecure`` says otherwise."""
    from kws_rpc.security.auth import is_loopback

    if tls is None and not insecure and not is_loopback(host):
        raise ValueError(f"refusing to serve plaintext on {host[:80]}: anyone on that network could read and send "
                         "requests. Give --tls-cert and --tls-key (and --tls-ca to require client certificates; "
                         "make certs creates a dev CA), bind 127.0.0.1, or pass --insecure to accept it")


def describe(tls: ServerTls | None, auth: AuthConfig) -> str:
    """One phrase for the startup log: what protects this server."""
    parts = ["plaintext" if tls is None else "TLS" + (", client certificates required" if tls.mutual else
                                                      ", client certificates optional" if tls.ca else "")]
    parts.append(f"tokens for {len(auth.tokens.names)} clients" if auth.tokens is not None else "no tokens")
    parts.append(f"rate limit {auth.rate:g}/s burst {auth.burst} per client"
                 f"{'' if auth.rate_limit_loopback else ' (loopback exempt)'}" if auth.rate > 0 else "no rate limit")
    return ", ".join(parts)
