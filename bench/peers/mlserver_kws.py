"""MLServer 1.7 serving a kws model (bench/peers/v2_model.py) as an MLServer user would: a custom
``MLModel`` runtime, started by ``mlserver start`` on a folder holding settings.json and
model-settings.json, which ``write_settings`` makes (parallel inference workers, metrics and access logs
off: what a user tuning for throughput sets).

    python -m bench.peers.mlserver_kws DIR --model models/big_int8.tflite --http-port 8080 --grpc-port 8081
    .venv-peers-mlserver/bin/mlserver start DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

try:  # only in the peer's venv; write_settings runs anywhere
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest, InferenceResponse
except ImportError:  # pragma: no cover
    MLModel = object  # type: ignore[misc,assignment]


class KwsRuntime(MLModel):  # type: ignore[misc,valid-type]
    async def load(self) -> bool:
        from bench.peers.v2_model import V2Kws

        self.kws = V2Kws(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inp = payload.inputs[0]
        if inp.datatype == "BYTES":
            data = np.array(inp.data.root if hasattr(inp.data, "root") else inp.data, dtype=object)
        else:
            data = NumpyCodec.decode_input(inp)
        probs = self.kws.probabilities(str(inp.datatype.value if hasattr(inp.datatype, "value") else inp.datatype), data)
        out = NumpyCodec.encode_output("probabilities", probs.astype(np.float32))
        return InferenceResponse(id=payload.id, model_name=self.name, outputs=[out])


def write_settings(folder: Path, model: Path, http_port: int, grpc_port: int, workers: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps({
        "http_port": http_port, "grpc_port": grpc_port, "metrics_port": 0, "metrics_endpoint": None,
        "parallel_workers": workers, "debug": False, "logging_level": "WARNING"}, indent=2))
    name = Path(model).stem
    (folder / "model-settings.json").write_text(json.dumps({
        "name": name, "implementation": "bench.peers.mlserver_kws.KwsRuntime",
        "parameters": {"uri": str(Path(model).resolve())}}, indent=2))
    return folder


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=1, help="MLServer's parallel inference workers (0: in the server process)")
    a = ap.parse_args(argv)
    print(write_settings(a.folder, a.model, a.http_port, a.grpc_port, a.workers))


if __name__ == "__main__":
    main()
