"""One module per architecture, each exposing ``Params`` (a frozen dataclass) and ``build(params, input_shape,
num_classes)``; REGISTRY maps architecture names to those modules."""

from __future__ import annotations

from types import ModuleType

from trainers.architectures import bcresnet, cnn, dscnn, resnet, tcresnet

REGISTRY: dict[str, ModuleType] = {"dscnn": dscnn, "resnet": resnet, "cnn": cnn, "bcresnet": bcresnet, "tcresnet": tcresnet}
