"""The tests run models on the interpreter users run: ai_edge_litert, never tf.lite (see tests/conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kws_rpc.model import KwsModel


def test_models_load_on_ai_edge_litert(little_path: Path) -> None:
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    m = KwsModel(little_path)
    assert m.predict(m.features(np.zeros(16000, np.float32))).shape == (1, len(m.labels))
    assert type(m._interpreter(1)) is litert.Interpreter
    assert "tensorflow" not in sys.modules
