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


CLIPS = REPO / "tests" / "fixtures" / "clips"


@pytest.fixture(scope="session")
def served_model_path() -> Path:
    """The model the server tests serve: $KWS_TEST_MODEL, else the shipped big model."""
    path = Path(os.environ.get("KWS_TEST_MODEL", MODELS / "big.tflite"))
    if not path.is_file():
        pytest.skip(f"{path} not found: train it (make train) or set KWS_TEST_MODEL=/path/to/model.tflite")
    return path


@pytest.fixture(scope="session")
def clip_wavs() -> dict[str, bytes]:
    """One test-split WAV file per word (tests/fixtures/clips/<word>.wav), as bytes."""
    return {p.stem: p.read_bytes() for p in sorted(CLIPS.glob("*.wav"))}
