"""DS-CNN (Zhang et al., "Hello Edge", 2017): a strided conv, then depthwise-separable blocks.

Layers get short names: TFLite keeps fused op names in the flatbuffer, and on a 20 KB edge budget
long names cost bytes.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

L = tf.keras.layers


@dataclasses.dataclass(frozen=True)
class Params:
    filters: int = 64
    blocks: int = 4
    first_kernel: tuple[int, int] = (10, 4)
    first_stride: tuple[int, int] = (2, 2)
    dropout: float = 0.2


def _bn_relu(x: tf.Tensor, tag: str) -> tf.Tensor:
    return L.ReLU(name=f"r{tag}")(L.BatchNormalization(name=f"n{tag}")(x))


def build(p: Params, x: tf.Tensor, num_classes: int) -> tf.Tensor:
    x = L.Conv2D(p.filters, p.first_kernel, strides=p.first_stride, padding="same", use_bias=False, name="c0")(x)
    x = _bn_relu(x, "0")
    x = L.Dropout(p.dropout / 2, name="d0")(x)
    for i in range(1, p.blocks + 1):
        x = _bn_relu(L.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"w{i}")(x), f"w{i}")
        x = _bn_relu(L.Conv2D(p.filters, 1, use_bias=False, name=f"c{i}")(x), f"c{i}")
    x = L.GlobalAveragePooling2D(name="g")(x)
    x = L.Dropout(p.dropout, name="d")(x)
    return L.Dense(num_classes, name="f")(x)
