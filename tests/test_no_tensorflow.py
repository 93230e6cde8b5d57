"""Only trainers/ imports TensorFlow: the edge and the server run on a TFLite interpreter alone."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHECK = """
import sys, importlib, pkgutil
import numpy as np
mods = ["kws_rpc.audio.features", "kws_rpc.model.kws_model", "kws_rpc.wire.codec", "kws_rpc.model.core", "kws_rpc.lab.data",
        "kws_rpc.lab.evaluate", "kws_rpc.proto.kws.v1.kws_pb2"]
for pkg in ("edge", "kws_rpc"):
    p = importlib.import_module(pkg)
    mods += [m.name for m in pkgutil.walk_packages(p.__path__, pkg + ".")]
for m in mods:
    try:
        importlib.import_module(m)
    except ImportError as e:  # optional extras (fastapi, grpc) may be absent on an edge install
        if "tensorflow" in str(e):
            raise
from kws_rpc.model.kws_model import KwsModel
m = KwsModel("models/little.tflite")
p = m.predict(m.features(np.zeros(16000, np.float32)))
assert p.shape == (1, 8)
bad = [k for k in sys.modules if k == "tensorflow" or k.startswith(("tensorflow.", "keras", "tf_keras"))]
assert not bad, bad
print("ok", len(mods))
"""


def test_edge_and_server_never_import_tensorflow() -> None:
    r = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("ok")
