"""REST/JSON gateway: HTTP in, the same data plane as gRPC behind it, HTTP out.

Behind it is a backend with one interface: co-hosted in ``kws-server --gateway-port``, the servicer's own
handlers in this process (``kws_rpc.serving.local_backend``, no gRPC hop); run on its own (``kws-gateway``),
a gRPC channel to a remote server (``kws_rpc.serving.grpc_backend``).

Endpoints (OpenAPI at /docs):
- ``PUT|POST /``: the reference client's SenML body, sent without a content type:
  ``{"bn": device, "bt": epoch_s, "e": [{"n": "audio", "u": "/", "t": 0, "vd": base64(16 kHz WAV)}]}``
  (a bare RFC 8428 record list works too). Other rates of 8-48 kHz are resampled by the server, as for
  gRPC. Answers the reference service's body, ``bn`` and ``bt`` echoed and ``e`` holding one record,
  ``{"n": "label_idx", "u": "/", "t": 0, "v": "3"}``: ``v`` is the index, as a string, of the label in
  the server's ``--spec-labels`` order (default the course's ``down,stop,right,left,up,yes,no,go``, so
  ``"3"`` is ``left``). The reference client reads only that record; kws clients read the fields beside
  it: ``label``, ``score``, ``margin``, ``probabilities`` ({label: p}), ``model``, ``model_version``,
  ``request_id``.
- ``POST /v1/predict`` and ``GET /v1/models/{name}``: the proto messages in proto3 JSON mapping.
- ``/healthz`` (this process is alive) and ``/readyz`` (the backend reports SERVING): always open.
- ``/v2/...``: the Open Inference Protocol (KServe V2), ``kws_rpc.serving.v2_rest``, with its own error body.
With a token file, every other path needs ``Authorization: Bearer <token>`` (401 otherwise; /docs and
/openapi.json only with --auth-introspection), and each client has a rate limit (429 with Retry-After).
Every failure answers ``{"error": {"code": http_status, "status": grpc_status_name, "message": ...}}``,
the message clipped to 1,000 characters. JSON bodies nested over 32 levels or with numbers over 40
characters are 400 (``kws_rpc.wire.safejson``). A body not received within ``--http-body-timeout-s`` (10 s) is
408; a connection with no complete request head within ``--http-header-timeout-s`` (10 s) is closed
(``kws_rpc.serving.http_limits``); a client that hangs up mid-request is logged at INFO.

Longer than most modules: the routes, their error mapping and the server's lifecycle are one adapter
and read best together; ``main`` is ``kws-gateway``, the gateway run on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.security import auth, tls
from kws_rpc.serving import ports
from kws_rpc.security.auth import AuthConfig, Guard, refusal_headers
from kws_rpc.wire import safejson
from kws_rpc.wire.codec import check_base64_fields
from kws_rpc.errors import (MAX_MESSAGE_CHARS, InvalidInput, KwsError, PayloadTooLarge, RequestTimeout,
                            Unavailable, clip)
from kws_rpc.security.tls import ClientTls, ServerTls, describe
from kws_rpc.serving.grpc_backend import Backend
from kws_rpc.serving.http_auth import GuardMiddleware
from kws_rpc.serving.http_limits import uvicorn_options
from kws_rpc.serving.limits import Limits, add_limit_args, limits_from_args
from kws_rpc.serving import v2_rest
from kws_rpc.wire.handlers import spec_request
from kws_rpc.wire.senml import SPEC_LABELS, check_label_order, parse_label_order, spec_reply, validate_label_order

log = logging.getLogger("kws_rpc.serving.gateway")  # not __name__: run with -m, that is __main__


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    grpc_target: str  # host:port of the gRPC server
    host: str = "127.0.0.1"
    port: int = 8080  # 0 = the OS picks a free port
    max_body_bytes: int = 1 << 20
    timeout_s: float = 10.0  # per forwarded call
    log_level: str = "info"
    spec_labels: tuple[str, ...] = SPEC_LABELS  # label_idx in the reply to / indexes this order
    tls: ServerTls | None = None  # None = plain HTTP
    auth: AuthConfig = AuthConfig()  # tokens (None = open) and the per-client rate limit
    backend_tls: ClientTls | None = None  # TLS to the gRPC server; None = plaintext
    # Sent to the gRPC server on every call; None = forward each HTTP client's own Authorization.
    backend_token: str | None = dataclasses.field(default=None, repr=False)
    limits: Limits = Limits()  # header/body read timeouts, keep-alive (see kws_rpc.serving.limits)
    reuse_port: bool = False  # SO_REUSEPORT: gateways of several server processes share the port

    def __post_init__(self) -> None:
        validate_label_order(self.spec_labels)


def error_response(status: int, grpc_status: str, message: str) -> JSONResponse:
    """The JSON error body; the message is clipped, whatever user input it quotes."""
    error = {"code": status, "status": grpc_status, "message": clip(message, MAX_MESSAGE_CHARS)}
    return JSONResponse({"error": error}, status_code=status)


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The raw body (whatever its content type), refusing more than ``limit`` bytes, or a body that has
    not fully arrived ``timeout_s`` after its request head (RequestTimeout, 408)."""
    declared = request.headers.get("content-length", "")
    too_large = PayloadTooLarge(f"body exceeds {limit} bytes; a 1 s 16 kHz clip needs about 43 kB")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()

    async def read() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise too_large

    try:
        async with asyncio.timeout(timeout_s):  # no task per request, as wait_for would make
            await read()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s ({len(body)} bytes "
                             "received)") from None
    return bytes(body)


_ID_PREFIX = secrets.token_hex(4)  # this process's: ids stay unique across the processes of one server
_id_counter = itertools.count(1)


def next_request_id() -> str:
    """A request id for a caller that sent none: unique, and ~30x cheaper than ``uuid.uuid4().hex``."""
    return f"{_ID_PREFIX}-{next(_id_counter):x}"


def make_app(config: GatewayConfig, guard: Guard | None = None, backend: Any = None) -> FastAPI:
    """``guard``: the co-hosting server's (shared rate limits); default, one of this app's own.
    ``backend``: the co-hosting server's in-process handlers (kws_rpc.serving.local_backend); default, gRPC to
    ``config.grpc_target``."""
    if backend is None:
        backend = Backend(config.grpc_target, config.timeout_s,
                          config.backend_tls.grpc_credentials() if config.backend_tls else None, config.backend_token)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        backend.close()

    description = f"{__doc__}\nThis gateway's --spec-labels order: {','.join(config.spec_labels)}."
    app = FastAPI(title="kws REST gateway", version="1", description=description, lifespan=lifespan)
    app.add_middleware(GuardMiddleware, guard=guard or Guard(config.auth))

    @app.exception_handler(KwsError)
    async def _domain(_: Request, e: KwsError) -> JSONResponse:
        if e.http_status >= 500:
            log.warning("%s: %s", type(e).__name__, e)
        response = error_response(e.http_status, e.grpc_code, str(e))
        response.headers.update(dict(refusal_headers(e)))  # e.g. the gRPC server's own rate limit, through kws-gateway
        return response

    @app.exception_handler(HTTPException)
    async def _http(_: Request, e: HTTPException) -> JSONResponse:
        status = {404: "NOT_FOUND", 405: "UNIMPLEMENTED"}.get(e.status_code, "INVALID_ARGUMENT")
        return error_response(e.status_code, status, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(400, "INVALID_ARGUMENT", f"bad request: {e.errors()}")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected gateway failure")
        return error_response(500, "INTERNAL", "internal gateway error; the gateway log has details")

    @app.exception_handler(RequestTimeout)
    async def _slow(request: Request, e: RequestTimeout) -> JSONResponse:
        log.info("%s %s from %s: %s", request.method, request.url.path, _peer(request), e)
        response = error_response(e.http_status, e.grpc_code, str(e))
        response.headers["connection"] = "close"  # the rest of the body may never come
        return response

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> JSONResponse:
        """The client hung up mid-request: nothing to answer, and not a server error."""
        log.info("%s %s from %s: the client disconnected", request.method, request.url.path, _peer(request))
        return error_response(499, "CANCELLED", "client closed the request")

    example_base = {"bn": "http://192.168.1.20/", "bt": 1700000000}
    example_label = "left" if "left" in config.spec_labels else config.spec_labels[0]
    spec_doc: dict[str, Any] = {
        "summary": "Classify a clip sent as the reference SenML body (any or no content type)",
        "description": f"Answers the reference reply: e = [label_idx record], v indexing --spec-labels "
                       f"({','.join(config.spec_labels)}); kws's fields beside it.",
        "openapi_extra": {"requestBody": {"required": True, "content": {"application/json": {"example": {
            **example_base, "e": [{"n": "audio", "u": "/", "t": 0, "vd": "UklGRi..."}]}}}}},
        "responses": {200: {"content": {"application/json": {"example": {
            **spec_reply(example_label, config.spec_labels, example_base), "label": example_label,
            "score": 0.98, "margin": 0.97, "probabilities": {example_label: 0.98}, "model": "big",
            "model_version": "1", "request_id": "4f2c..."}}}}},
    }

    @app.put("/", operation_id="spec_put", **spec_doc)
    @app.post("/", operation_id="spec_post", **spec_doc)
    async def spec_predict(request: Request, model: str = "") -> JSONResponse:
        body = await read_body(request, config.max_body_bytes, config.limits.http_body_timeout_s)
        rid = request.headers.get("x-request-id") or next_request_id()
        req, base = spec_request(body, model, rid)
        creds = request.headers.get("authorization")
        p = (await backend.predict(req, auth=creds)).prediction
        labels = await backend.labels(p.model, p.model_version, auth=creds)
        try:
            check_label_order(config.spec_labels, labels, p.model)
            reply = spec_reply(p.label, config.spec_labels, base)
        except ValueError as e:  # a model whose labels the spec's label order cannot index
            raise InvalidInput(f"the spec body's reply cannot name this model's answer ({e}); ask it at "
                               "/v1/predict, or start the server with a --spec-labels order that names its labels") from None
        # a JSONResponse as it is: FastAPI would otherwise walk the dict through jsonable_encoder first
        return JSONResponse({**reply, "label": p.label, "score": p.probabilities[p.index], "margin": p.margin,
                             "probabilities": dict(zip(labels, p.probabilities)), "model": p.model,
                             "model_version": p.model_version, "request_id": rid})

    @app.post("/v1/predict", summary="PredictRequest -> PredictResponse (proto3 JSON mapping)")
    async def v1_predict(request: Request) -> dict[str, Any]:
        body = await read_body(request, config.max_body_bytes, config.limits.http_body_timeout_s)
        try:
            doc = safejson.loads(body or b"{}")
            if not isinstance(doc, dict):
                raise json_format.ParseError(f"expected a JSON object, got {type(doc).__name__}")
            req = json_format.ParseDict(doc, pb.PredictRequest())
        except (json.JSONDecodeError, json_format.ParseError, UnicodeDecodeError) as e:
            raise InvalidInput(f"body is not a kws.v1.PredictRequest in proto3 JSON: {e}") from None
        check_base64_fields(doc)
        return json_format.MessageToDict(await backend.predict(req, auth=request.headers.get("authorization")))

    @app.get("/v1/models/{name}", summary="ModelMetadata of a served model (proto3 JSON mapping)")
    async def v1_model(name: str, request: Request) -> dict[str, Any]:
        meta = await backend.metadata(pb.ModelMetadataRequest(model=name), auth=request.headers.get("authorization"))
        return json_format.MessageToDict(meta)

    @app.get("/healthz", summary="The gateway process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The gRPC backend reports SERVING")
    async def readyz() -> dict[str, str]:
        if not await backend.ready():
            raise Unavailable(f"gRPC backend {backend.target} is not serving")
        return {"status": "SERVING", "backend": backend.target}

    v2_rest.add_routes(app, backend, lambda r: read_body(r, config.max_body_bytes, config.limits.http_body_timeout_s))
    return app


def _peer(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


class GatewayServer:
    """The gateway on a background thread of this process (``kws-server --gateway-port``, tests)."""

    def __init__(self, config: GatewayConfig, grace_s: float = 5.0, guard: Guard | None = None,
                 backend: Any = None) -> None:
        import uvicorn

        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so; without it every
        # keep-alive response waits ~40 ms for a delayed ACK (Nagle).
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if config.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((config.host, config.port))
        self.port: int = sock.getsockname()[1]
        self.url = f"{'https' if config.tls else 'http'}://{config.host}:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(
            make_app(config, guard, backend), log_level=config.log_level, access_log=config.log_level == "debug",
            log_config=None, timeout_graceful_shutdown=int(grace_s) or 1,  # the host process owns logging
            **uvicorn_options(config.limits), **(config.tls.uvicorn_kwargs() if config.tls else {})))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="kws-gateway", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the REST gateway did not start on {self.url}")
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        """Stops accepting connections and lets requests in progress finish."""
        self._server.should_exit = True
        self._thread.join(timeout)


def check_backend_labels(config: GatewayConfig) -> None:
    """At startup, the backend's default model must fit ``--spec-labels`` (ValueError if not). A backend
    that is not up yet is only logged: every request to ``/`` checks its model again."""
    import grpc

    backend = Backend(config.grpc_target, config.timeout_s,
                      config.backend_tls.grpc_credentials() if config.backend_tls else None, config.backend_token)
    try:
        meta = backend.stub.GetModelMetadata(
            pb.ModelMetadataRequest(), timeout=min(config.timeout_s, 3.0),
            metadata=(("authorization", f"Bearer {config.backend_token}"),) if config.backend_token else None)
    except grpc.RpcError as e:
        log.warning("could not check --spec-labels against %s now (%s); each request checks its model",
                    config.grpc_target, e.code().name)
        return
    finally:
        backend.channel.close()
    check_label_order(config.spec_labels, list(meta.labels), meta.name)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description="kws REST/JSON gateway in front of a kws gRPC server")
    ap.add_argument("--grpc-target", required=True,
                    help="host:port of the gRPC server, an ip:port list, or dns:///name:port: several servers "
                         "are balanced with gRPC round_robin and health checks")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    ap.add_argument("--port", type=int, default=8080, help="HTTP port (default %(default)s)")
    ap.add_argument("--max-body-bytes", type=int, default=1 << 20,
                    help="larger bodies get 413 (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per forwarded call")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ap.add_argument("--spec-labels", default=",".join(SPEC_LABELS),
                    help="label order that label_idx in the reply to / indexes; must name every label of "
                         "the model (default: the course's order, then the listening models' rejections: %(default)s)")
    ap.add_argument("--insecure", action="store_true", help="allow plain HTTP on a non-loopback --host")
    tls.add_server_args(ap)
    auth.add_server_args(ap)
    env = dict(os.environ)
    g = ap.add_argument_group("the gRPC server behind (each flag defaults to its environment variable)")
    g.add_argument("--grpc-tls-ca", default=env.get("KWS_GRPC_TLS_CA"),
                   help="TLS to the gRPC server, trusting this CA ($KWS_GRPC_TLS_CA); any --grpc-tls-* turns TLS on")
    g.add_argument("--grpc-tls-cert", default=env.get("KWS_GRPC_TLS_CERT"),
                   help="client certificate ($KWS_GRPC_TLS_CERT)")
    g.add_argument("--grpc-tls-key", default=env.get("KWS_GRPC_TLS_KEY"), help="its key ($KWS_GRPC_TLS_KEY)")
    g.add_argument("--grpc-token", default=env.get("KWS_GRPC_TOKEN"),
                   help="bearer token for the gRPC server ($KWS_GRPC_TOKEN); default: forward each client's own")
    add_limit_args(ap, grpc=False)
    a = ap.parse_args(argv)
    try:
        spec_labels = parse_label_order(a.spec_labels)
        server_tls = tls.server_tls_from_args(a)
        backend_tls = None
        if a.grpc_tls_ca or a.grpc_tls_cert or a.grpc_tls_key:
            backend_tls = ClientTls(*(Path(p) if p else None for p in (a.grpc_tls_ca, a.grpc_tls_cert, a.grpc_tls_key)))
            backend_tls.check()
        if server_tls is not None:
            server_tls.check()
        tls.check_exposure(a.host, server_tls, a.insecure)
        config = GatewayConfig(a.grpc_target, a.host, a.port, a.max_body_bytes, a.timeout, a.log_level, spec_labels,
                               server_tls, auth.auth_config_from_args(a), backend_tls, a.grpc_token or None,
                               limits_from_args(a))
    except ValueError as e:
        ap.error(str(e))
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        held = ports.claim(config.host, [config.port], "kws gateway or server")  # held until this process exits
        check_backend_labels(config)
    except (ValueError, ports.PortTaken) as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    log.info("gateway on %s://%s:%d -> grpc %s (%s)", "https" if config.tls else "http", config.host, config.port,
             config.grpc_target, describe(config.tls, config.auth))
    uvicorn.run(make_app(config), host=config.host, port=config.port, log_level=config.log_level,
                access_log=config.log_level == "debug", **uvicorn_options(config.limits),
                **(config.tls.uvicorn_kwargs() if config.tls else {}))
    held.release()


if __name__ == "__main__":
    main()
