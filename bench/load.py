"""Load generator for bench_server: client processes separate from the server under test.

Each client process keeps its share of the concurrent clients busy, each client on its own connection
(so a server with several processes sees the connections spread over them): gRPC clients are asyncio
tasks on grpc.aio channels with pre-serialized requests; REST clients are threads with a keep-alive
HTTP/1.1 connection each, sending the reference SenML body. Latencies come back to the parent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import multiprocessing
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from kws_rpc.proto.kws.v1 import kws_pb2 as pb

PREDICT = "/kws.v1.KeywordSpotting/Predict"
PREDICT_STREAM = "/kws.v1.KeywordSpotting/PredictStream"


@dataclasses.dataclass(frozen=True)
class Job:
    transport: str  # "grpc" or "rest"
    target: str  # host:port (gRPC; a comma-separated list: the clients take turns over them) or http://host:port (REST)
    bodies: list[tuple[str, bytes]]  # (expected label, serialized PredictRequest or JSON body)
    clients: int  # concurrent clients in this process
    requests: int  # this process's share
    seconds: float
    grpc_method: str = PREDICT  # any unary method: the bodies are sent as they are
    http: tuple[str, str, tuple[tuple[str, str], ...]] = ("PUT", "/", ())  # method, path, headers
    check: str = "kws"  # "kws": the reply's label must be the body's word; "status": only OK / 200 counts
    stream: bool = False  # gRPC: each client sends its requests one after another on one PredictStream call


def _grpc(job: Job) -> dict[str, Any]:
    import grpc

    async def main() -> dict[str, Any]:
        state = {"next": 0, "errors": 0, "wrong": 0}
        per_client: list[list[float]] = [[] for _ in range(job.clients)]
        deadline = time.monotonic() + job.seconds
        targets = job.target.split(",")
        # a local subchannel pool: a connection per channel, not one shared by identical channels
        channels = [grpc.aio.insecure_channel(targets[i % len(targets)], options=[("grpc.use_local_subchannel_pool", 1)])
                    for i in range(job.clients)]

        def take() -> tuple[str, bytes] | None:
            if time.monotonic() >= deadline or state["next"] >= job.requests:
                return None
            state["next"] += 1
            return job.bodies[(state["next"] - 1) % len(job.bodies)]

        def record(t0: float, word: str, reply: Any, mine: list[float]) -> None:
            mine.append(time.perf_counter() - t0)
            state["wrong"] += job.check == "kws" and reply.prediction.label != word

        deserialize = pb.PredictResponse.FromString if job.check == "kws" else None

        async def client(channel: grpc.aio.Channel, mine: list[float]) -> None:
            call = channel.unary_unary(job.grpc_method, response_deserializer=deserialize)
            while (item := take()) is not None:
                word, body = item
                t0 = time.perf_counter()
                try:
                    reply = await call(body, timeout=30)
                except grpc.aio.AioRpcError:
                    state["errors"] += 1
                    continue
                record(t0, word, reply, mine)

        async def streaming_client(channel: grpc.aio.Channel, mine: list[float]) -> None:
            call = channel.stream_stream(PREDICT_STREAM, response_deserializer=deserialize)(timeout=job.seconds + 30)
            try:
                while (item := take()) is not None:
                    word, body = item
                    t0 = time.perf_counter()
                    await call.write(body)
                    record(t0, word, await call.read(), mine)
                await call.done_writing()
            except grpc.aio.AioRpcError:
                state["errors"] += 1  # the stream is over: this client stops

        start = time.perf_counter()
        await asyncio.gather(*((streaming_client if job.stream else client)(c, mine) for c, mine in zip(channels, per_client)))
        elapsed = time.perf_counter() - start
        for c in channels:
            await c.close()
        latencies = [x for mine in per_client for x in mine]
        return {"latencies": latencies, "elapsed": elapsed, "errors": state["errors"], "wrong": state["wrong"],
                "client_mean_s": [sum(m) / len(m) for m in per_client if m]}

    return asyncio.run(main())


def _rest(job: Job) -> dict[str, Any]:
    parts = urlsplit(job.target)
    lock = threading.Lock()
    state = {"next": 0, "errors": 0, "wrong": 0}
    latencies: list[float] = []
    deadline = time.monotonic() + job.seconds

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        while time.monotonic() < deadline:
            with lock:
                i = state["next"]
                if i >= job.requests:
                    break
                state["next"] += 1
            word, body = job.bodies[i % len(job.bodies)]
            t0 = time.perf_counter()
            try:
                conn.request(job.http[0], job.http[1], body=body, headers=dict(job.http[2]))
                r = conn.getresponse()
                data = r.read()
                if r.status != 200:
                    raise OSError(r.status)
                label = json.loads(data)["label"] if job.check == "kws" else word
            except (OSError, http.client.HTTPException, ValueError):
                with lock:
                    state["errors"] += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
                continue
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                state["wrong"] += label != word
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(job.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies": latencies, "elapsed": time.perf_counter() - start, "errors": state["errors"],
            "wrong": state["wrong"]}


def _run(job: Job) -> dict[str, Any]:
    return _grpc(job) if job.transport == "grpc" else _rest(job)


def drive(job: Job, processes: int) -> dict[str, Any]:
    """Splits the job's clients and requests over ``processes`` client processes; merged results."""
    processes = max(1, min(processes, job.clients))
    shares = [dataclasses.replace(job, clients=job.clients // processes + (i < job.clients % processes),
                                  requests=job.requests // processes + (i < job.requests % processes))
              for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        parts = pool.map(_run, shares)
    return {"latencies": [x for p in parts for x in p["latencies"]], "elapsed": max(p["elapsed"] for p in parts),
            "errors": sum(p["errors"] for p in parts), "wrong": sum(p["wrong"] for p in parts),
            "client_mean_s": [x for p in parts for x in p.get("client_mean_s", [])]}  # gRPC: each connection's mean
