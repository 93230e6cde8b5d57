"""Shared fixtures. The real dataset comes from find_dataset (KWS_DATA_DIR, ./data, ../shared/data);
shipped models come from models/.

The test process runs models on the interpreter users run (ai_edge_litert): TensorFlow never enters it.
Tests that need TensorFlow use the ``tf_child`` fixture (see tests/tf_child.py), and the guards below fail
the test that imports TensorFlow here, and the session if the runtime is not the production one.

``pytest -m fast`` (``make test-fast``) is the quick loop: the modules of FAST_MODULES, less their tests
that read the data set or start TensorFlow; about half a minute here. ``make test`` runs everything.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tf_child import TfChild, tensorflow_installed

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"

# Modules whose tests run on the shipped models and fixtures alone, in seconds.
FAST_MODULES = {"test_adpcm", "test_architecture", "test_bad_inputs", "test_batching", "test_card", "test_cli",
                "test_codec", "test_deploy", "test_ensemble", "test_features", "test_gateway", "test_limits",
                "test_no_tensorflow", "test_protos", "test_runtime", "test_server", "test_stats", "test_docs_commands",
                "test_lock", "test_listen", "test_bench_peers", "test_bench_stream", "test_k8s"}
SLOW_FIXTURES = {"dataset_root", "test_audio", "tf_child"}  # the data set, or a TensorFlow child process


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module.__name__.rpartition(".")[2] in FAST_MODULES and \
                not SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.fast)


@pytest.fixture(scope="session")
def dataset_root() -> Path:
    from kws_rpc.lab.data import find_dataset

    return find_dataset()


@pytest.fixture(scope="session")
def test_audio(dataset_root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The 800 test clips (audio, labels, names), read once per session."""
    from kws_rpc.lab.data import load_split

    return load_split("test", dataset_root)


@pytest.fixture(scope="session")
def little_path() -> Path:
    return Path(os.environ.get("KWS_TEST_LITTLE", MODELS / "little.tflite"))


CLIPS = REPO / "tests" / "fixtures" / "clips"


@pytest.fixture(scope="session")
def served_model_path() -> Path:
    """The model the server tests serve: $KWS_TEST_MODEL, else the one `make server` serves (big_int8)."""
    path = Path(os.environ.get("KWS_TEST_MODEL", MODELS / "big_int8.tflite"))  # what make server serves
    if not path.is_file():
        pytest.skip(f"{path} not found: train it (make train) or set KWS_TEST_MODEL=/path/to/model.tflite")
    return path


@pytest.fixture(scope="session")
def clip_wavs() -> dict[str, bytes]:
    """One test-split WAV file per word (tests/fixtures/clips/<word>.wav), as bytes."""
    return {p.stem: p.read_bytes() for p in sorted(CLIPS.glob("*.wav"))}


def runtime_problem() -> str | None:
    """Why this process would not run models the way users do, or None."""
    if "tensorflow" in sys.modules:
        return "tensorflow is imported in the test process, so kws_rpc.model.interpreter loads models with tf.lite"
    if importlib.util.find_spec("ai_edge_litert") is not None:
        from ai_edge_litert.interpreter import Interpreter

        from kws_rpc.model.interpreter import interpreter_class

        if interpreter_class() is not Interpreter:
            return f"kws_rpc.model.interpreter.interpreter_class() is {interpreter_class()}, not ai_edge_litert's Interpreter"
    return None


@pytest.fixture(scope="session", autouse=True)
def production_runtime() -> Iterator[None]:
    """Fails the session if models in this process are not run by the production interpreter: checked once
    collection has imported every test module, and again at the end."""
    if problem := runtime_problem():
        pytest.fail(f"before the first test: {problem} (a test module imports it at collection; "
                    "use the tf_child fixture)", pytrace=False)
    yield
    if problem := runtime_problem():
        pytest.fail(f"at the end of the session: {problem}", pytrace=False)


@pytest.fixture(autouse=True)
def _tensorflow_stays_out(request: pytest.FixtureRequest) -> Iterator[None]:
    """Names the test that brought TensorFlow into the test process (every later test would use tf.lite)."""
    before = "tensorflow" in sys.modules
    yield
    if not before and "tensorflow" in sys.modules:
        pytest.fail(f"{request.node.nodeid} imported tensorflow into the test process: run TensorFlow code "
                    "through the tf_child fixture", pytrace=False)


@pytest.fixture(scope="session")
def tf_child() -> Iterator[TfChild]:
    """A child process for TensorFlow work (skips where TensorFlow is not installed, e.g. the edge)."""
    if not tensorflow_installed():
        pytest.skip("tensorflow is not installed (the training extra)")
    child = TfChild()
    yield child
    child.close()
