"""gRPC calls that hold a thread cannot starve the server: a cap on open streams and an idle timeout.

grpc's synchronous server gives every call a thread of its pool for as long as the call lasts, and a
request-streaming call lasts until the client closes it: 64 idle ``PredictStream`` calls held all 64
threads, and a fresh unary Predict waited until its deadline. ``StreamLimiter`` (a server interceptor)
admits at most ``max_streams`` request-streaming calls at once (the next is RESOURCE_EXHAUSTED at once,
with a message) and ends a stream that sends no request for ``idle_s`` with DEADLINE_EXCEEDED. The cap on
all calls is grpc's own ``maximum_concurrent_rpcs``; the deadline of one prediction is the core's.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from kws_rpc.serving.metrics import Metrics
from kws_rpc.wire.service import ERROR_KEY

log = logging.getLogger(__name__)


class StreamLimiter(grpc.ServerInterceptor):
    def __init__(self, max_streams: int, idle_s: float, metrics: Metrics | None = None) -> None:
        self.max_streams, self.idle_s, self.metrics = max_streams, idle_s, metrics
        self._lock = threading.Lock()
        self.open = 0  # streams admitted and not yet ended

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or not handler.request_streaming:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(handler.stream_stream, method), handler.request_deserializer,
                handler.response_serializer)
        return grpc.stream_unary_rpc_method_handler(
            self._unary(handler.stream_unary, method), handler.request_deserializer, handler.response_serializer)

    def _streaming(self, behaviour: Callable[..., Iterator[Any]], method: str) -> Callable[..., Iterator[Any]]:
        def run(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            self._admit(context, method)
            idle = IdleTimeout(requests, context, self.idle_s, method, self._count)
            try:
                yield from behaviour(idle, context)
            finally:
                idle.close()
                self._release()
        return run

    def _unary(self, behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
        def run(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            self._admit(context, method)
            idle = IdleTimeout(requests, context, self.idle_s, method, self._count)
            try:
                return behaviour(idle, context)
            finally:
                idle.close()
                self._release()
        return run

    def _admit(self, context: grpc.ServicerContext, method: str) -> None:
        with self._lock:
            full = self.open >= self.max_streams
            if not full:
                self.open += 1
        if full:
            log.debug("%s refused: %d streams open", method, self.max_streams)
            self._count(method, "RESOURCE_EXHAUSTED", "Overloaded")
            context.set_trailing_metadata(((ERROR_KEY, "Overloaded"),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self.max_streams} streams are open, this server's limit (--max-streams): retry "
                          "later, or send unary Predict calls")

    def _release(self) -> None:
        with self._lock:
            self.open -= 1

    def _count(self, method: str, code: str, error: str) -> None:
        if self.metrics is not None:
            self.metrics.requests.labels(method, code).inc()
            self.metrics.errors.labels(method, error).inc()


_END = object()
POLL_S = 0.5  # how soon a waiting handler notices that its call has ended


class IdleTimeout:
    """A stream's requests, ending the call if the next one takes longer than ``idle_s``.

    grpc's request iterator blocks without a timeout, so a reader thread waits on it and hands each
    request over through a one-slot queue (no read-ahead beyond one message); the handler's thread
    waits on the queue with the timeout and aborts the call from its own thread, as grpc requires.
    The reader ends when the call does (grpc then ends its iterator) or when ``close`` is called; the
    handler notices a call that ended (a client cancel) within ``POLL_S``."""

    def __init__(self, requests: Iterator[Any], context: grpc.ServicerContext, idle_s: float, method: str,
                 count: Callable[[str, str, str], None]) -> None:
        self._requests, self._context, self.idle_s, self._method, self._count = requests, context, idle_s, method, count
        self._slot: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._closed = threading.Event()
        context.add_callback(self._closed.set)
        self._reader = threading.Thread(target=self._read, name=f"kws-stream-reader-{method}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                item: Any = next(self._requests)
            except StopIteration:
                item = _END
            except BaseException as e:  # noqa: BLE001 - the client cancelled: the handler re-raises it
                item = e
            while not self._closed.is_set():
                try:
                    self._slot.put(item, timeout=0.5)
                    break
                except queue.Full:
                    continue
            if item is _END or isinstance(item, BaseException):
                return

    def __iter__(self) -> "IdleTimeout":
        return self

    def __next__(self) -> Any:
        deadline = time.monotonic() + self.idle_s
        while True:
            if (left := deadline - time.monotonic()) <= 0:
                self._idle()
            try:
                item = self._slot.get(timeout=min(left, POLL_S))
                break
            except queue.Empty:
                if self._closed.is_set():  # the call ended (a client cancel): nothing more will come
                    raise StopIteration from None
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def _idle(self) -> None:
        log.info("%s from %s: no request for %g s, ended", self._method, self._context.peer(), self.idle_s)
        self._count(self._method, "DEADLINE_EXCEEDED", "RequestTimeout")
        self._context.set_trailing_metadata(((ERROR_KEY, "RequestTimeout"),))
        self._context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"no request for {self.idle_s:g} s: idle streams are ended (--stream-idle-s)")

    def close(self) -> None:
        self._closed.set()
