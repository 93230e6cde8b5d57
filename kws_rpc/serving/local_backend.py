"""The co-hosted gateway's backend: the handlers the gRPC servicer calls, run in this process.

KServe's one data plane for REST and gRPC: ``kws-server --gateway-port`` serves REST by calling
``kws_rpc.wire.handlers`` directly, with no loopback gRPC hop (serialize, send, parse, and back). A gateway
run on its own talks gRPC to a remote server instead (``kws_rpc.serving.grpc_backend.Backend``); the two offer
the same methods: ``predict``, ``metadata``, ``labels``, ``ready``, ``close`` and ``target``, and those of
the Open Inference Protocol (``kws_rpc.wire.v2``): ``v2_infer``, ``v2_model_metadata``, ``v2_model_ready``,
``v2_server_metadata``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kws_rpc.errors import KwsError
from kws_rpc.model.core import InferenceCore
from kws_rpc.proto.inference import grpc_service_pb2 as v2
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.serving.metrics import Metrics
from kws_rpc.wire import handlers, v2 as v2_handlers

T = TypeVar("T")


class LocalBackend:
    target = "in-process"

    def __init__(self, core: InferenceCore, metrics: Metrics, ready: Callable[[], bool], threads: int = 16) -> None:
        """Without batching a prediction (about a millisecond) runs inline on the event loop: a hop to a
        thread and back costs more than it frees. With batching, requests wait for their batch in a pool
        of ``threads``, so the loop keeps reading the requests that fill it."""
        self.core, self.metrics, self._ready = core, metrics, ready
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="kws-rest") if core.batcher else None

    async def _run(self, method: str, fn: Callable[..., T], *args: Any) -> T:
        def work() -> T:
            with self.metrics.call(method) as record:  # counted like the gRPC calls, by method and code
                try:
                    return fn(*args)
                except KwsError as e:
                    record.fail(e.grpc_code, type(e).__name__)
                    raise

        if self._pool is None:
            return work()
        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    async def predict(self, req: pb.PredictRequest, auth: str | None = None) -> pb.PredictResponse:
        """``auth`` is the HTTP request's; the gateway has checked it already, so it is not needed here."""
        return await self._run("Predict", handlers.predict, self.core, req)

    async def metadata(self, req: pb.ModelMetadataRequest, auth: str | None = None) -> pb.ModelMetadata:
        return await self._run("GetModelMetadata", handlers.metadata, self.core, req)

    async def labels(self, model: str, version: str, auth: str | None = None) -> list[str]:
        return list(self.core.model(model).labels)

    async def v2_infer(self, req: v2.ModelInferRequest, auth: str | None = None) -> v2.ModelInferResponse:
        return await self._run("ModelInfer", v2_handlers.infer, self.core, req)

    async def v2_model_metadata(self, req: v2.ModelMetadataRequest, auth: str | None = None) -> v2.ModelMetadataResponse:
        return await self._run("ModelMetadata", v2_handlers.model_metadata, self.core, req)

    async def v2_model_ready(self, req: v2.ModelReadyRequest, auth: str | None = None) -> v2.ModelReadyResponse:
        return await self._run("ModelReady", v2_handlers.model_ready, self.core, req, self._ready())

    async def v2_server_metadata(self, auth: str | None = None) -> v2.ServerMetadataResponse:
        return v2_handlers.server_metadata()

    async def ready(self) -> bool:
        return self._ready()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
