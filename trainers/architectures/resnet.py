"""A small ResNet (after Tang & Lin, "Deep residual learning for small-footprint KWS", 2018) with
strided stages so it stays cheap on a CPU server."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

L = tf.keras.layers


@dataclasses.dataclass(frozen=True)
class Params:
    stem: int = 32
    stem_stride: tuple[int, int] = (2, 2)
    channels: tuple[int, ...] = (48, 96, 128)
    blocks_per_stage: int = 1
    dropout: float = 0.3


def _block(x: tf.Tensor, c: int, stride: int) -> tf.Tensor:
    shortcut = x
    y = L.Conv2D(c, 3, strides=stride, padding="same", use_bias=False)(x)
    y = L.ReLU()(L.BatchNormalization()(y))
    y = L.Conv2D(c, 3, padding="same", use_bias=False)(y)
    y = L.BatchNormalization()(y)
    if stride != 1 or shortcut.shape[-1] != c:
        shortcut = L.BatchNormalization()(L.Conv2D(c, 1, strides=stride, use_bias=False)(shortcut))
    return L.ReLU()(L.Add()([y, shortcut]))


def build(p: Params, x: tf.Tensor, num_classes: int) -> tf.Tensor:
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(p.stem, 3, strides=p.stem_stride, padding="same", use_bias=False)(x)))
    for i, c in enumerate(p.channels):
        for j in range(p.blocks_per_stage):
            x = _block(x, c, 2 if (j == 0 and i > 0) else 1)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dropout(p.dropout)(x)
    return L.Dense(num_classes)(x)
