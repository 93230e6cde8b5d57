"""KServe 0.21 serving a kws model (bench/peers/v2_model.py) as a KServe user would: a ``kserve.Model``
with a synchronous ``predict``, ``kserve.ModelServer`` on an HTTP and a gRPC port, access logs and the per-request trace log off.

    .venv-peers-kserve/bin/python -m bench.peers.kserve_kws --model models/big_int8.tflite --http-port 8080 \\
        --grpc-port 8081 --workers 1
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

from bench.peers.v2_model import V2Kws


class KwsKServe(Model):
    def __init__(self, path: str) -> None:
        self.path = path
        self.kws = V2Kws(path)
        super().__init__(self.kws.name)
        self.load()

    # With --workers above 1 KServe pickles the model into spawned processes: each loads its own
    # interpreter (a TFLite interpreter cannot be pickled).
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "kws"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.kws = V2Kws(self.path)

    def load(self) -> bool:
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        inp = payload.inputs[0]
        probs = self.kws.probabilities(inp.datatype, inp.as_numpy())
        out = InferOutput("probabilities", list(probs.shape), "FP32")
        out.set_data_from_numpy(probs, binary_data=False)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=[out])


def quiet_trace_log() -> None:
    """KServe's REST timing middleware logs a line per request on ``kserve.trace``, whatever
    ``enable_latency_logging`` says; a tuned deployment raises that logger's level. ModelServer reads
    the log config from its own parsed arguments (every worker applies it), so the file goes there."""
    import kserve.logging
    import kserve.model_server

    config = copy.deepcopy(kserve.logging.KSERVE_LOG_CONFIG)
    config["loggers"]["kserve.trace"]["level"] = "WARNING"
    path = Path(tempfile.mkdtemp(prefix="kws-kserve-")) / "log_config.json"
    path.write_text(json.dumps(config))
    kserve.model_server.args.configure_logging = True
    kserve.model_server.args.log_config_file = str(path)
    kserve.logging.configure_logging(str(path))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args(argv)
    quiet_trace_log()
    ModelServer(http_port=a.http_port, grpc_port=a.grpc_port, workers=a.workers, enable_docs_url=False,
                access_log_format=None, enable_latency_logging=False).start([KwsKServe(a.model)])


if __name__ == "__main__":
    main()
