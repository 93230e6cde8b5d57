"""KServe 0.21 serving a kws model (bench/peers/v2_model.py) as a KServe user would: a ``kserve.Model``
with a synchronous ``predict``, ``kserve.ModelServer`` on an HTTP and a gRPC port, access logs off.

    .venv-peers-kserve/bin/python -m bench.peers.kserve_kws --model models/big_int8.tflite --http-port 8080 \\
        --grpc-port 8081 --workers 1
"""

from __future__ import annotations

import argparse

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

from bench.peers.v2_model import V2Kws


class KwsKServe(Model):
    def __init__(self, path: str) -> None:
        self.kws = V2Kws(path)
        super().__init__(self.kws.name)
        self.load()

    def load(self) -> bool:
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        inp = payload.inputs[0]
        probs = self.kws.probabilities(inp.datatype, inp.as_numpy())
        out = InferOutput("probabilities", list(probs.shape), "FP32")
        out.set_data_from_numpy(probs, binary_data=False)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=[out])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args(argv)
    ModelServer(http_port=a.http_port, grpc_port=a.grpc_port, workers=a.workers, enable_docs_url=False,
                access_log_format=None, enable_latency_logging=False).start([KwsKServe(a.model)])


if __name__ == "__main__":
    main()
