"""Where the shipped models are: $KWS_MODELS_DIR, else the models installed with kws, else the checkout's."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "KWS_MODELS_DIR"
CHECKOUT = Path(__file__).resolve().parents[2] / "models"


def models_dir() -> Path:
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    try:
        from importlib import resources

        installed = Path(str(resources.files("kws_models")))
        if (installed / "little.tflite").is_file():
            return installed
    except (ImportError, TypeError):
        pass
    return CHECKOUT
