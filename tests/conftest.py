"""Shared fixtures. The real dataset comes from find_dataset (KWS_DATA_DIR, ./data, ../shared/data);
shipped models come from models/."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"


@pytest.fixture(scope="session")
def dataset_root() -> Path:
    from kws_rpc.data import find_dataset

    return find_dataset()


@pytest.fixture(scope="session")
def test_audio(dataset_root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The 800 test clips (audio, labels, names), read once per session."""
    from kws_rpc.data import load_split

    return load_split("test", dataset_root)


@pytest.fixture(scope="session")
def little_path() -> Path:
    return Path(os.environ.get("KWS_TEST_LITTLE", MODELS / "little.tflite"))
