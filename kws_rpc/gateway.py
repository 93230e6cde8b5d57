"""REST/JSON gateway: a thin HTTP shim that forwards every call to the gRPC server over a channel.

Endpoints (OpenAPI at /docs):
- ``PUT|POST /``: the reference client's SenML body, sent without a content type:
  ``{"bn": device, "bt": epoch_s, "e": [{"n": "audio", "u": "/", "t": 0, "vd": base64(16 kHz WAV)}]}``
  (a bare RFC 8428 record list works too). Answers ``{"label", "score", "margin", "probabilities":
  {label: p}, "model", "model_version", "request_id", "bn", "bt"}``. Other rates of 8-48 kHz are
  resampled by the server, as for gRPC.
- ``POST /v1/predict`` and ``GET /v1/models/{name}``: the proto messages in proto3 JSON mapping.
- ``/healthz`` (this process is alive) and ``/readyz`` (the gRPC backend reports SERVING).
Every failure answers ``{"error": {"code": http_status, "status": grpc_status_name, "message": ...}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.exceptions import HTTPException

from kws.v1 import kws_pb2 as pb
from kws.v1 import kws_pb2_grpc as pb_grpc
from kws_rpc import errors
from kws_rpc.errors import InvalidInput, KwsError, PayloadTooLarge, Unavailable
from kws_rpc.servicer import ERROR_KEY, SERVICE

log = logging.getLogger(__name__)

SENML_HINT = 'send {"bn": ..., "bt": ..., "e": [{"n": "audio", "vd": "<base64 of a 16-bit mono WAV>"}]}'
# gRPC status -> domain error, for failures that carry no kws-error trailer (e.g. the backend is down).
_ERROR_OF_STATUS: dict[grpc.StatusCode, type[KwsError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidInput,
    grpc.StatusCode.NOT_FOUND: errors.UnknownModel,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.Overloaded,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
}


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    grpc_target: str  # host:port of the gRPC server
    host: str = "127.0.0.1"
    port: int = 8080  # 0 = the OS picks a free port
    max_body_bytes: int = 1 << 20
    timeout_s: float = 10.0  # per forwarded call
    log_level: str = "info"


def error_from_rpc(e: grpc.RpcError) -> KwsError:
    """The single gRPC -> domain error mapping; the domain error then carries its HTTP status."""
    name = dict(e.trailing_metadata() or ()).get(ERROR_KEY, "")
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, KwsError)):
        cls = _ERROR_OF_STATUS.get(e.code(), KwsError)
    message = e.details() or e.code().name
    if e.code() == grpc.StatusCode.UNAVAILABLE and not name:
        message = f"the inference backend is unavailable ({message}); retry shortly"
    return cls(message)


def error_response(status: int, grpc_status: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "status": grpc_status, "message": message}}, status_code=status)


def wav_from_senml(body: bytes) -> tuple[bytes, dict[str, Any]]:
    """The WAV bytes of the audio record, and the base record fields (bn, bt) to echo."""
    if not body.strip():
        raise InvalidInput(f"empty body: {SENML_HINT}")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"body is not JSON ({e}): {SENML_HINT}") from None
    records = doc.get("e") if isinstance(doc, dict) else doc
    base = doc if isinstance(doc, dict) else (doc[0] if isinstance(doc, list) and doc else {})
    base = base if isinstance(base, dict) else {}
    if not isinstance(records, list):
        raise InvalidInput(f'no SenML record list ("e"): {SENML_HINT}')
    audio = [r for r in records if isinstance(r, dict) and r.get("n") == "audio"]
    if not audio or not isinstance(audio[0].get("vd"), str):
        raise InvalidInput(f'no audio record with a "vd" string: {SENML_HINT}')
    try:
        wav = base64.b64decode(audio[0]["vd"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(f'"vd" is not valid base64 ({e}): encode the WAV file bytes with base64') from None
    return wav, {k: base[k] for k in ("bn", "bt") if k in base}


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body (whatever its content type), refusing more than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    too_large = PayloadTooLarge(f"body exceeds {limit} bytes; a 1 s 16 kHz clip needs about 43 kB")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


class Backend:
    """The gRPC side: one channel, calls awaited without tying up a thread each."""

    def __init__(self, config: GatewayConfig) -> None:
        self.target = config.grpc_target
        self.timeout = config.timeout_s
        self.channel = grpc.insecure_channel(config.grpc_target)
        self.stub = pb_grpc.KeywordSpottingStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self._labels: dict[tuple[str, str], list[str]] = {}

    async def call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        call = method.future(request, timeout=timeout or self.timeout)

        def transfer(f: Any) -> None:
            if not done.done():
                try:
                    done.set_result(f.result())
                except grpc.RpcError as e:
                    done.set_exception(error_from_rpc(e))
                except grpc.FutureCancelledError:
                    done.cancel()

        call.add_done_callback(lambda f: loop.call_soon_threadsafe(transfer, f))
        try:
            return await done
        except asyncio.CancelledError:
            call.cancel()
            raise

    async def labels(self, model: str, version: str) -> list[str]:
        if (model, version) not in self._labels:
            meta = await self.call(self.stub.GetModelMetadata, pb.ModelMetadataRequest(model=model))
            self._labels[(model, version)] = list(meta.labels)
        return self._labels[(model, version)]

    async def ready(self) -> bool:
        try:
            reply = await self.call(self.health.Check, health_pb2.HealthCheckRequest(service=SERVICE), timeout=2.0)
        except KwsError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def make_app(config: GatewayConfig) -> FastAPI:
    backend = Backend(config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        backend.channel.close()

    app = FastAPI(title="kws REST gateway", version="1", description=__doc__, lifespan=lifespan)

    @app.exception_handler(KwsError)
    async def _domain(_: Request, e: KwsError) -> JSONResponse:
        if e.http_status >= 500:
            log.warning("%s: %s", type(e).__name__, e)
        return error_response(e.http_status, e.grpc_code, str(e))

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

    spec_doc: dict[str, Any] = {
        "summary": "Classify a clip sent as the reference SenML body (any or no content type)",
        "openapi_extra": {"requestBody": {"required": True, "content": {"application/json": {"example": {
            "bn": "http://192.168.1.20/", "bt": 1700000000, "e": [{"n": "audio", "u": "/", "t": 0, "vd": "UklGRi..."}]}}}}},
    }

    @app.put("/", operation_id="spec_put", **spec_doc)
    @app.post("/", operation_id="spec_post", **spec_doc)
    async def spec_predict(request: Request, model: str = "") -> dict[str, Any]:
        wav, base = wav_from_senml(await read_body(request, config.max_body_bytes))
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        req = pb.PredictRequest(request_id=rid, model=model, audio=pb.Audio(wav=wav))
        p = (await backend.call(backend.stub.Predict, req)).prediction
        labels = await backend.labels(p.model, p.model_version)
        return {"label": p.label, "score": p.probabilities[p.index], "margin": p.margin,
                "probabilities": dict(zip(labels, p.probabilities)), "model": p.model,
                "model_version": p.model_version, "request_id": rid, **base}

    @app.post("/v1/predict", summary="PredictRequest -> PredictResponse (proto3 JSON mapping)")
    async def v1_predict(request: Request) -> dict[str, Any]:
        body = await read_body(request, config.max_body_bytes)
        try:
            req = json_format.Parse(body or b"{}", pb.PredictRequest())
        except (json_format.ParseError, UnicodeDecodeError) as e:
            raise InvalidInput(f"body is not a kws.v1.PredictRequest in proto3 JSON: {e}") from None
        return json_format.MessageToDict(await backend.call(backend.stub.Predict, req))

    @app.get("/v1/models/{name}", summary="ModelMetadata of a served model (proto3 JSON mapping)")
    async def v1_model(name: str) -> dict[str, Any]:
        meta = await backend.call(backend.stub.GetModelMetadata, pb.ModelMetadataRequest(model=name))
        return json_format.MessageToDict(meta)

    @app.get("/healthz", summary="The gateway process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The gRPC backend reports SERVING")
    async def readyz() -> dict[str, str]:
        if not await backend.ready():
            raise Unavailable(f"gRPC backend {backend.target} is not serving")
        return {"status": "SERVING", "backend": backend.target}

    return app


class GatewayServer:
    """The gateway on a background thread of this process (``kws-server --gateway-port``, tests)."""

    def __init__(self, config: GatewayConfig, grace_s: float = 5.0) -> None:
        import uvicorn

        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so; without it every
        # keep-alive response waits ~40 ms for a delayed ACK (Nagle).
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.port))
        self.port: int = sock.getsockname()[1]
        self.url = f"http://{config.host}:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(
            make_app(config), log_level=config.log_level, access_log=config.log_level == "debug",
            log_config=None, timeout_graceful_shutdown=int(grace_s) or 1))  # the host process owns logging
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


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description="kws REST/JSON gateway in front of a kws gRPC server")
    ap.add_argument("--grpc-target", required=True, help="host:port of the gRPC server")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    ap.add_argument("--port", type=int, default=8080, help="HTTP port (default %(default)s)")
    ap.add_argument("--max-body-bytes", type=int, default=1 << 20,
                    help="larger bodies get 413 (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per forwarded call")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    a = ap.parse_args(argv)
    config = GatewayConfig(a.grpc_target, a.host, a.port, a.max_body_bytes, a.timeout, a.log_level)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("gateway on http://%s:%d -> grpc %s", config.host, config.port, config.grpc_target)
    uvicorn.run(make_app(config), host=config.host, port=config.port, log_level=config.log_level,
                access_log=config.log_level == "debug")


if __name__ == "__main__":
    main()
