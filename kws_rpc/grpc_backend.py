"""The gateway's gRPC side: one channel to the kws server, calls awaited from asyncio, and the single
mapping from gRPC failures back to domain errors (which carry their HTTP status)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kws.v1 import kws_pb2 as pb
from kws.v1 import kws_pb2_grpc as pb_grpc
from kws_rpc import errors
from kws_rpc.errors import KwsError
from kws_rpc.servicer import ERROR_KEY, SERVICE

# gRPC status -> domain error, for failures that carry no kws-error trailer (e.g. the backend is down).
_ERROR_OF_STATUS: dict[grpc.StatusCode, type[KwsError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidInput,
    grpc.StatusCode.NOT_FOUND: errors.UnknownModel,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.Overloaded,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
}


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


class Backend:
    """The gRPC side: one channel, calls awaited without tying up a thread each."""

    def __init__(self, target: str, timeout_s: float) -> None:
        self.target = target
        self.timeout = timeout_s
        self.channel = grpc.insecure_channel(target)
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
