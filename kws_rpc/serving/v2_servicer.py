"""The Open Inference Protocol's gRPC adapter (``inference.GRPCInferenceService``), for a ``grpc.aio`` server.

The work is done by ``kws_rpc.wire.v2`` (shared with the REST routes); this servicer adds error
translation (the status of the domain error, its class in the ``kws-error`` trailer, as the kws.v1
servicer does) and metrics by method. Requests arrive as raw bytes (see ``add_to_server``), so a
malformed proto is INVALID_ARGUMENT with a reason rather than gRPC's own INTERNAL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from kws_rpc.errors import MAX_MESSAGE_CHARS, KwsError, clip
from kws_rpc.model.core import InferenceCore
from kws_rpc.proto.inference import grpc_service_pb2 as v2
from kws_rpc.proto.inference import grpc_service_pb2_grpc as v2_grpc
from kws_rpc.serving.metrics import Metrics
from kws_rpc.wire import codec, v2 as handlers
from kws_rpc.wire.service import ERROR_KEY

log = logging.getLogger(__name__)

SERVICE = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name  # "inference.GRPCInferenceService"
M = TypeVar("M", bound=Message)
T = TypeVar("T")


def _message(kind: type[M], request: M | bytes) -> M:
    return codec.parse(kind, request) if isinstance(request, bytes) else request


class V2Servicer(v2_grpc.GRPCInferenceServiceServicer):
    """``ready``: whether the server is serving (what ServerReady and ModelReady report)."""

    def __init__(self, core: InferenceCore, metrics: Metrics | None = None,
                 ready: Callable[[], bool] = lambda: True) -> None:
        self.core, self.metrics, self.ready = core, metrics or Metrics(), ready

    async def ServerLive(self, request: v2.ServerLiveRequest | bytes,
                         context: grpc.aio.ServicerContext) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: v2.ServerReadyRequest | bytes,
                          context: grpc.aio.ServicerContext) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self.ready())

    async def ServerMetadata(self, request: v2.ServerMetadataRequest | bytes,
                             context: grpc.aio.ServicerContext) -> v2.ServerMetadataResponse:
        return handlers.server_metadata()

    async def ModelReady(self, request: v2.ModelReadyRequest | bytes,
                         context: grpc.aio.ServicerContext) -> v2.ModelReadyResponse:
        return await self._guard("ModelReady", context, lambda: handlers.model_ready(
            self.core, _message(v2.ModelReadyRequest, request), self.ready()))

    async def ModelMetadata(self, request: v2.ModelMetadataRequest | bytes,
                            context: grpc.aio.ServicerContext) -> v2.ModelMetadataResponse:
        return await self._guard("ModelMetadata", context, lambda: handlers.model_metadata(
            self.core, _message(v2.ModelMetadataRequest, request)))

    async def ModelInfer(self, request: v2.ModelInferRequest | bytes,
                         context: grpc.aio.ServicerContext) -> v2.ModelInferResponse:
        return await self._guard("ModelInfer", context, lambda: handlers.infer(
            self.core, _message(v2.ModelInferRequest, request)))

    async def _guard(self, method: str, context: grpc.aio.ServicerContext, fn: Callable[[], T]) -> T:
        with self.metrics.call(method) as record:
            try:
                return fn()
            except KwsError as e:
                record.fail(e.grpc_code, type(e).__name__)
                message = clip(str(e), MAX_MESSAGE_CHARS)
                log.info("%s -> %s: %s", method, e.grpc_code, message)
                code, text, trailers = grpc.StatusCode[e.grpc_code], message, ((ERROR_KEY, type(e).__name__),)
            except Exception:
                record.fail("INTERNAL", "unexpected")
                log.exception("%s failed unexpectedly", method)
                code, text, trailers = grpc.StatusCode.INTERNAL, "internal server error; the server log has details", ()
        await context.abort(code, text, trailers)
        raise AssertionError("unreachable: context.abort raises")


RESPONSES: dict[str, type[Message]] = {
    "ServerLive": v2.ServerLiveResponse, "ServerReady": v2.ServerReadyResponse,
    "ModelReady": v2.ModelReadyResponse, "ServerMetadata": v2.ServerMetadataResponse,
    "ModelMetadata": v2.ModelMetadataResponse, "ModelInfer": v2.ModelInferResponse,
}


def add_to_server(servicer: V2Servicer, server: grpc.aio.Server) -> None:
    """Registers the service like the generated helper, but with requests left as bytes."""
    handlers_ = {name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name),
                                                           response_serializer=kind.SerializeToString)
                 for name, kind in RESPONSES.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers_),))
    server.add_registered_method_handlers(SERVICE, handlers_)
