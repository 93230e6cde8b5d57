"""Model cards: the JSON beside every shipped .tflite that says what the model expects and how good it is."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

from kws_rpc.audio.features import FeatureConfig
from kws_rpc.errors import ModelIntegrityError

# The eight words of Mini Speech Commands in the data set's label order (index i is label i of a split).
# A card lists its own model's labels; this order is what runs over the data set and the coop client use.
LABELS: tuple[str, ...] = ("down", "go", "left", "no", "right", "stop", "up", "yes")


@dataclasses.dataclass
class ModelCard:
    name: str
    version: str
    architecture: str
    params: dict[str, Any]
    num_parameters: int
    feature: FeatureConfig
    input_shape: list[int]
    input_dtype: str
    labels: list[str]
    quantization: str
    sha256: str
    size_bytes: int
    zlib_bytes: int
    metrics: dict[str, float]
    train_command: str
    description: str = ""
    # What the .tflite outputs: "probabilities" (a softmax layer) or "logits" (the runtime applies softmax
    # in float32: an int8 softmax output is quantized to 1/256 and ties the score margins of close calls).
    output: str = "probabilities"
    training: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["feature"] = self.feature.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelCard":
        d = dict(d)
        try:
            d["feature"] = FeatureConfig.from_dict(d["feature"])
            card = cls(**d)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelIntegrityError(f"model card is incomplete or malformed: {e}") from None
        if card.output not in ("probabilities", "logits"):
            raise ModelIntegrityError(f"model card output {card.output!r} must be 'probabilities' or 'logits'")
        return card

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def card_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def file_facts(content: bytes) -> dict[str, Any]:
    return {
        "sha256": hashlib.sha256(content).hexdigest(),
        "size_bytes": len(content),
        "zlib_bytes": len(zlib.compress(content, 9)),
    }


def load_card(model_path: Path, content: bytes) -> ModelCard:
    """Reads the card beside model_path and checks that content is the file it describes."""
    cpath = card_path(model_path)
    if not cpath.is_file():
        raise ModelIntegrityError(f"{model_path} has no model card ({cpath}); models are shipped with one")
    card = ModelCard.from_dict(json.loads(cpath.read_text()))
    digest = hashlib.sha256(content).hexdigest()
    if digest != card.sha256:
        raise ModelIntegrityError(
            f"{model_path} sha256 {digest[:12]}... does not match its card ({card.sha256[:12]}...): "
            "the file was changed or the card belongs to another model; retrain or restore both"
        )
    return card
