"""The gRPC adapter (``grpc.aio``): wire messages in, ``InferenceCore`` calls, wire messages out.

The work is done by plain functions, ``kws_rpc.wire.handlers.predict`` and ``metadata`` (testable without
gRPC, and shared with the gateway's in-process backend and the MQTT worker); the servicer adds error
translation, trailing metadata and metrics. Requests arrive as raw bytes (see ``add_to_server``) so that a malformed proto
is INVALID_ARGUMENT with a reason, rather than gRPC's own "Exception deserializing request!" INTERNAL.

Where the model runs: with batching off (the default) a prediction costs about a millisecond of CPU and
runs inline on the event loop, as KServe's and MLServer's asyncio servers run a synchronous model: a
hop to a thread pool and back would cost more than it frees. With batching on, a call waits for its
batch in ``Offload``'s threads, so the loop keeps accepting the calls that fill the batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from kws_rpc.errors import MAX_MESSAGE_CHARS, KwsError, clip, quote
from kws_rpc.model.core import InferenceCore
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.serving.grpc_limits import StreamGate
from kws_rpc.serving.metrics import Metrics
from kws_rpc.wire import codec
from kws_rpc.wire.handlers import metadata, predict
from kws_rpc.wire.service import ERROR_KEY, SERVICE

log = logging.getLogger(__name__)


M = TypeVar("M", bound=Message)
T = TypeVar("T")


def message(kind: type[M], request: M | bytes) -> M:
    """``request`` parsed as ``kind`` when it came as raw bytes (a malformed one: InvalidInput)."""
    return codec.parse(kind, request) if isinstance(request, bytes) else request


class KwsServicer:
    """Accepts parsed messages or raw bytes (``add_to_server`` registers it with raw bytes)."""

    def __init__(self, core: InferenceCore, metrics: Metrics | None = None, streams: StreamGate | None = None,
                 offload: ThreadPoolExecutor | None = None) -> None:
        """``streams``: the cap on open streams and their idle timeout (default: none); ``offload``: where
        predictions wait for their batch when the core batches (default: inline, for a core that does
        not)."""
        self.core = core
        self.metrics = metrics or Metrics()
        self.streams = streams
        self.offload = offload

    async def Predict(self, request: pb.PredictRequest | bytes, context: grpc.aio.ServicerContext) -> pb.PredictResponse:
        return await self._guard("Predict", context, lambda: predict(self.core, message(pb.PredictRequest, request)))

    async def PredictStream(self, request_iterator: AsyncIterator[pb.PredictRequest | bytes],
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.PredictResponse]:
        """Answers in order. A bad item ends the call with its status; the message names the item's
        position and request_id, and the answers already sent stand."""
        if self.streams is None:
            async for reply in self._stream(request_iterator, context):
                yield reply
            return
        async with self.streams.admit(context, "PredictStream"):
            async for reply in self._stream(self.streams.requests(request_iterator, context, "PredictStream"),
                                            context):
                yield reply

    async def _stream(self, requests: AsyncIterator[pb.PredictRequest | bytes],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.PredictResponse]:
        i = 0
        async for raw in requests:
            yield await self._guard("PredictStream", context, lambda: self._stream_item(i, raw))
            i += 1

    async def GetModelMetadata(self, request: pb.ModelMetadataRequest | bytes,
                               context: grpc.aio.ServicerContext) -> pb.ModelMetadata:
        return await self._guard("GetModelMetadata", context,
                                 lambda: metadata(self.core, message(pb.ModelMetadataRequest, request)))

    def _stream_item(self, index: int, raw: pb.PredictRequest | bytes) -> pb.PredictResponse:
        request_id = ""
        try:
            req = message(pb.PredictRequest, raw)
            request_id = req.request_id
            return predict(self.core, req)
        except KwsError as e:
            raise type(e)(f"stream item {index} (request_id {quote(request_id, 40)}): {e}") from None

    async def _guard(self, method: str, context: grpc.aio.ServicerContext, fn: Callable[[], T]) -> T:
        return await guard(method, context, fn, self.metrics, self.offload)


async def guard(method: str, context: grpc.aio.ServicerContext, fn: Callable[[], T], metrics: Metrics,
                offload: ThreadPoolExecutor | None = None) -> T:
    """Runs ``fn`` (inline, or in ``offload`` when the core batches) as one call of ``method``: timed and
    counted in ``metrics``, a domain error ending the call with its status and the ``kws-error`` trailer.
    Every grpc.aio servicer of the server (kws.v1, the V2 protocol's) answers through it."""
    with metrics.call(method) as record:
        try:
            if offload is None:
                return fn()
            return await asyncio.get_running_loop().run_in_executor(offload, fn)
        except KwsError as e:
            record.fail(e.grpc_code, type(e).__name__)
            text = clip(str(e), MAX_MESSAGE_CHARS)  # bounded even if a value slipped in whole
            log.info("%s -> %s: %s", method, e.grpc_code, text)
            context.set_trailing_metadata(((ERROR_KEY, type(e).__name__),))
            await context.abort(grpc.StatusCode[e.grpc_code], text)
        except Exception:
            record.fail("INTERNAL", "unexpected")
            log.exception("%s failed unexpectedly", method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error; the server log has details")
    raise AssertionError("unreachable: context.abort raises")


def add_to_server(servicer: KwsServicer, server: grpc.aio.Server) -> None:
    """Registers the service like the generated helper, but with requests left as bytes."""
    handlers = {
        "Predict": grpc.unary_unary_rpc_method_handler(
            servicer.Predict, response_serializer=pb.PredictResponse.SerializeToString),
        "PredictStream": grpc.stream_stream_rpc_method_handler(
            servicer.PredictStream, response_serializer=pb.PredictResponse.SerializeToString),
        "GetModelMetadata": grpc.unary_unary_rpc_method_handler(
            servicer.GetModelMetadata, response_serializer=pb.ModelMetadata.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
