"""The Open Inference Protocol's REST routes (KServe V2, as Triton serves them) on the gateway's FastAPI app.

Routes (a model's routes also under ``/v2/models/{name}/versions/{version}``):
- ``GET /v2/health/live``, ``GET /v2/health/ready``: open, like /healthz and /readyz (probes send no token);
- ``GET /v2``: server metadata (name, version, extensions);
- ``GET /v2/models/{name}``: model metadata; ``GET /v2/models/{name}/ready``: 200 when ready;
- ``POST /v2/models/{name}/infer``: JSON tensors and the binary tensor data extension (``kws_rpc.wire.v2_http``).
Each request becomes the V2 proto message and goes to the backend, in-process or gRPC, as kws.v1's do.
Failures answer the protocol's ``{"error": "message"}`` with the domain error's status (400, 404, 413,
503, ...), not the gateway's own error shape; so does any other path under /v2.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from kws_rpc.errors import MAX_MESSAGE_CHARS, KwsError, RequestTimeout, Unavailable, UnknownModel, clip
from kws_rpc.proto.inference import grpc_service_pb2 as v2
from kws_rpc.security.auth import refusal_headers
from kws_rpc.wire import v2_http

log = logging.getLogger(__name__)

PREFIX = "/v2"
OPEN_PATHS = frozenset({f"{PREFIX}/health/live", f"{PREFIX}/health/ready"})


def is_v2(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_body(e: KwsError) -> dict[str, str]:
    return {"error": clip(str(e), MAX_MESSAGE_CHARS)}


def error_response(e: KwsError) -> JSONResponse:
    if e.http_status >= 500:
        log.warning("%s: %s", type(e).__name__, e)
    response = JSONResponse(error_body(e), status_code=e.http_status, headers=dict(refusal_headers(e)))
    if isinstance(e, RequestTimeout):
        response.headers["connection"] = "close"  # the rest of the body may never come
    return response


async def _answer(work: Awaitable[Any]) -> Any:
    try:
        return await work
    except KwsError as e:
        return error_response(e)
    except Exception:
        log.exception("unexpected failure on a V2 route")
        return JSONResponse({"error": "internal server error; the server log has details"}, status_code=500)


def add_routes(app: FastAPI, backend: Any, read_body: Callable[[Request], Awaitable[bytes]]) -> None:
    """Adds the V2 routes to ``app``; ``backend`` is the gateway's (local or gRPC), ``read_body`` reads a
    request body within the gateway's size and time limits."""

    def auth(request: Request) -> str | None:
        return request.headers.get("authorization")

    async def live(request: Request) -> dict[str, bool]:
        return {"live": True}

    async def ready(request: Request) -> dict[str, bool]:
        if not await backend.ready():
            raise Unavailable(f"the inference backend {backend.target} is not serving yet")
        return {"ready": True}

    async def server_metadata(request: Request) -> dict[str, Any]:
        return v2_http.server_metadata_json(await backend.v2_server_metadata(auth=auth(request)))

    async def model_metadata(request: Request, name: str, version: str = "") -> dict[str, Any]:
        meta = await backend.v2_model_metadata(v2.ModelMetadataRequest(name=name, version=version), auth=auth(request))
        return v2_http.model_metadata_json(meta)

    async def model_ready(request: Request, name: str, version: str = "") -> dict[str, Any]:
        reply = await backend.v2_model_ready(v2.ModelReadyRequest(name=name, version=version), auth=auth(request))
        if not reply.ready:
            raise Unavailable(f"model {name} is not ready yet; retry shortly")
        return {"name": name, "ready": True}

    async def infer(request: Request, name: str, version: str = "") -> Response:
        body = await read_body(request)
        call = v2_http.parse_infer(body, request.headers.get(v2_http.HEADER_LENGTH), name, version)
        content, headers = v2_http.render_infer(await backend.v2_infer(call.request, auth=auth(request)), call)
        return Response(content, headers=headers)

    async def unknown(request: Request, path: str) -> dict[str, Any]:
        raise UnknownModel(f"no V2 route {request.method} {PREFIX}/{clip(path, 80)}: see docs/protocol.md "
                           "for the Open Inference Protocol's routes")

    def route(path: str, fn: Callable[..., Awaitable[Any]], methods: list[str], summary: str,
              versioned: bool = False, listed: bool = True) -> None:
        """``fn(request, **path parameters)`` on ``path`` (and, when ``versioned``, on its
        /versions/{version} twin), failures answered as V2 errors."""
        async def endpoint(request: Request) -> Any:
            return await _answer(fn(request, **request.path_params))

        app.add_api_route(path, endpoint, methods=methods, summary=summary, include_in_schema=listed)
        if versioned:
            twin = path.replace("/models/{name}", "/models/{name}/versions/{version}")
            app.add_api_route(twin, endpoint, methods=methods, summary=f"{summary} (at a version)")

    route(f"{PREFIX}/health/live", live, ["GET"], "V2: the server is live")
    route(f"{PREFIX}/health/ready", ready, ["GET"], "V2: the backend is serving")
    route(PREFIX, server_metadata, ["GET"], "V2: server metadata")
    route(f"{PREFIX}/models/{{name}}", model_metadata, ["GET"], "V2: model metadata", versioned=True)
    route(f"{PREFIX}/models/{{name}}/ready", model_ready, ["GET"], "V2: the model is ready", versioned=True)
    route(f"{PREFIX}/models/{{name}}/infer", infer, ["POST"], "V2: inference (JSON or binary tensors)", versioned=True)
    route(f"{PREFIX}/{{path:path}}", unknown, ["GET", "POST", "PUT", "DELETE", "PATCH"], "V2: any other path", listed=False)
