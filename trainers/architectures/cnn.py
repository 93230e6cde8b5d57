"""A VGG-style CNN: pairs of 3x3 convolutions and max-pooling, global pooling, one dense layer."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

L = tf.keras.layers


@dataclasses.dataclass(frozen=True)
class Params:
    channels: tuple[int, ...] = (32, 48, 96)
    dropout: float = 0.3


def build(p: Params, x: tf.Tensor, num_classes: int) -> tf.Tensor:
    """One conv in the first stage (full resolution is costly), two in the others."""
    for i, c in enumerate(p.channels):
        for _ in range(1 if i == 0 else 2):
            x = L.Conv2D(c, 3, padding="same", use_bias=False)(x)
            x = L.ReLU()(L.BatchNormalization()(x))
        if i < len(p.channels) - 1:
            x = L.MaxPool2D(2, padding="same")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dropout(p.dropout)(x)
    return L.Dense(num_classes)(x)
