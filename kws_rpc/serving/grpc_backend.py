"""The gateway's gRPC side: one channel to the kws server, calls awaited from asyncio, and the single
mapping from gRPC failures back to domain errors (which carry their HTTP status)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kws_rpc import errors
from kws_rpc.errors import KwsError
from kws_rpc.proto.inference import grpc_service_pb2 as v2
from kws_rpc.proto.inference import grpc_service_pb2_grpc as v2_grpc
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.proto.kws.v1 import kws_pb2_grpc as pb_grpc
from kws_rpc.wire.channels import open_channel
from kws_rpc.wire.service import ERROR_KEY, SERVICE

# gRPC status -> domain error, for failures that carry no kws-error trailer (e.g. the backend is down).
_ERROR_OF_STATUS: dict[grpc.StatusCode, type[KwsError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidInput,
    grpc.StatusCode.NOT_FOUND: errors.UnknownModel,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.Overloaded,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
}


def error_from_rpc(e: grpc.RpcError) -> KwsError:
    """The single gRPC -> domain error mapping; the domain error then carries its HTTP status."""
    trailers = dict(e.trailing_metadata() or ())
    name = trailers.get(ERROR_KEY, "")
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, KwsError)):
        cls = _ERROR_OF_STATUS.get(e.code(), KwsError)
    message = e.details() or e.code().name
    if e.code() == grpc.StatusCode.UNAVAILABLE and not name:
        message = f"the inference backend is unavailable ({message}); retry shortly"
    if issubclass(cls, errors.RateLimited):
        try:
            return cls(message, float(trailers.get("retry-after", "1")))
        except ValueError:
            return cls(message)
    return cls(message)


class Backend:
    """The gRPC side: one channel, calls awaited without tying up a thread each."""

    def __init__(self, target: str, timeout_s: float, credentials: grpc.ChannelCredentials | None = None,
                 token: str | None = None) -> None:
        """``credentials``: TLS to the server (None = plaintext); ``token``: sent on every call (None = each
        call forwards the ``auth`` it is given, the HTTP client's own Authorization)."""
        self.target = target
        self.timeout = timeout_s
        self.token = token
        self.channel = open_channel(target, credentials)  # one server, a list, or dns:/// (round_robin)
        self.stub = pb_grpc.KeywordSpottingStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.v2 = v2_grpc.GRPCInferenceServiceStub(self.channel)  # the Open Inference Protocol (V2)
        self._labels: dict[tuple[str, str], list[str]] = {}

    async def call(self, method: Any, request: Any, timeout: float | None = None, auth: str | None = None) -> Any:
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        auth = f"Bearer {self.token}" if self.token else auth
        if auth and not (auth.isascii() and auth.isprintable()):  # gRPC would refuse the metadata with a 500
            auth = None  # the server then answers UNAUTHENTICATED, as for any bad credentials
        call = method.future(request, timeout=timeout or self.timeout,
                             metadata=(("authorization", auth),) if auth else None)

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

    async def predict(self, req: pb.PredictRequest, auth: str | None = None) -> pb.PredictResponse:
        return await self.call(self.stub.Predict, req, auth=auth)

    async def metadata(self, req: pb.ModelMetadataRequest, auth: str | None = None) -> pb.ModelMetadata:
        return await self.call(self.stub.GetModelMetadata, req, auth=auth)

    async def v2_infer(self, req: v2.ModelInferRequest, auth: str | None = None) -> v2.ModelInferResponse:
        return await self.call(self.v2.ModelInfer, req, auth=auth)

    async def v2_model_metadata(self, req: v2.ModelMetadataRequest, auth: str | None = None) -> v2.ModelMetadataResponse:
        return await self.call(self.v2.ModelMetadata, req, auth=auth)

    async def v2_model_ready(self, req: v2.ModelReadyRequest, auth: str | None = None) -> v2.ModelReadyResponse:
        return await self.call(self.v2.ModelReady, req, auth=auth)

    async def v2_server_metadata(self, auth: str | None = None) -> v2.ServerMetadataResponse:
        return await self.call(self.v2.ServerMetadata, v2.ServerMetadataRequest(), auth=auth)

    def close(self) -> None:
        self.channel.close()

    async def labels(self, model: str, version: str, auth: str | None = None) -> list[str]:
        if (model, version) not in self._labels:
            meta = await self.call(self.stub.GetModelMetadata, pb.ModelMetadataRequest(model=model), auth=auth)
            self._labels[(model, version)] = list(meta.labels)
        return self._labels[(model, version)]

    async def ready(self) -> bool:
        try:
            reply = await self.call(self.health.Check, health_pb2.HealthCheckRequest(service=SERVICE), timeout=2.0)
        except KwsError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING
