"""The Open Inference Protocol's gRPC adapter (``inference.GRPCInferenceService``), for the grpc.aio server.

The work is done by ``kws_rpc.wire.v2`` (shared with the REST routes); the servicer answers through
``kws_rpc.serving.servicer.guard`` as the kws.v1 servicer does: metrics by method, a domain error ending
the call with its status and the ``kws-error`` trailer, the model run inline or, when the core batches,
waiting for its batch in the offload threads. Requests arrive as raw bytes (see ``add_to_server``), so a
malformed proto is INVALID_ARGUMENT with a reason rather than gRPC's own INTERNAL.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf.message import Message

from kws_rpc.model.core import InferenceCore
from kws_rpc.proto.inference import grpc_service_pb2 as v2
from kws_rpc.proto.inference import grpc_service_pb2_grpc as v2_grpc
from kws_rpc.serving.metrics import Metrics
from kws_rpc.serving.servicer import guard, message
from kws_rpc.wire import v2 as handlers

SERVICE = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name  # "inference.GRPCInferenceService"


class V2Servicer(v2_grpc.GRPCInferenceServiceServicer):
    """``ready``: whether the server is serving (what ServerReady and ModelReady report); ``offload``: as
    for ``KwsServicer``, where calls wait for their batch when the core batches."""

    def __init__(self, core: InferenceCore, metrics: Metrics | None = None, ready: Callable[[], bool] = lambda: True,
                 offload: ThreadPoolExecutor | None = None) -> None:
        self.core, self.metrics, self.ready, self.offload = core, metrics or Metrics(), ready, offload

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
        return await guard("ModelReady", context, lambda: handlers.model_ready(
            self.core, message(v2.ModelReadyRequest, request), self.ready()), self.metrics)

    async def ModelMetadata(self, request: v2.ModelMetadataRequest | bytes,
                            context: grpc.aio.ServicerContext) -> v2.ModelMetadataResponse:
        return await guard("ModelMetadata", context, lambda: handlers.model_metadata(
            self.core, message(v2.ModelMetadataRequest, request)), self.metrics)

    async def ModelInfer(self, request: v2.ModelInferRequest | bytes,
                         context: grpc.aio.ServicerContext) -> v2.ModelInferResponse:
        return await guard("ModelInfer", context, lambda: handlers.infer(
            self.core, message(v2.ModelInferRequest, request)), self.metrics, self.offload)


RESPONSES: dict[str, type[Message]] = {
    "ServerLive": v2.ServerLiveResponse, "ServerReady": v2.ServerReadyResponse,
    "ModelReady": v2.ModelReadyResponse, "ServerMetadata": v2.ServerMetadataResponse,
    "ModelMetadata": v2.ModelMetadataResponse, "ModelInfer": v2.ModelInferResponse,
}


def add_to_server(servicer: V2Servicer, server: grpc.aio.Server) -> None:
    """Registers the service like the generated helper, but with requests left as bytes."""
    methods = {name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name),
                                                         response_serializer=kind.SerializeToString)
               for name, kind in RESPONSES.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    server.add_registered_method_handlers(SERVICE, methods)
