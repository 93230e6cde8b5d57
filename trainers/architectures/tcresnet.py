"""TC-ResNet (after Choi et al., "Temporal Convolution for Real-time Keyword Spotting on Mobile Devices",
Interspeech 2019): the mel bins are the channels of a 1-D convolution over time, so every filter sees
the whole spectrum of a few frames at once. The 2-D models here (ResNet, CNN, DS-CNN) slide small
kernels over time and frequency instead: another inductive bias, for an ensemble member whose errors
differ. Written with Conv2D on a (frames, 1, bins) tensor, as the paper does, so it exports to the
same TFLite ops as the other architectures.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

L = tf.keras.layers


@dataclasses.dataclass(frozen=True)
class Params:
    stem: int = 24  # first 3x1 convolution
    channels: tuple[int, ...] = (36, 36, 48, 48, 72, 72)  # one residual block each (TC-ResNet14, width 1.5)
    strides: tuple[int, ...] = (2, 1, 2, 1, 2, 1)
    kernel: int = 9  # frames per temporal convolution
    dropout: float = 0.3


def _block(x: tf.Tensor, c: int, stride: int, k: int) -> tf.Tensor:
    shortcut = x
    y = L.Conv2D(c, (k, 1), strides=(stride, 1), padding="same", use_bias=False)(x)
    y = L.ReLU()(L.BatchNormalization()(y))
    y = L.Conv2D(c, (k, 1), padding="same", use_bias=False)(y)
    y = L.BatchNormalization()(y)
    if stride != 1 or shortcut.shape[-1] != c:
        shortcut = L.ReLU()(L.BatchNormalization()(L.Conv2D(c, 1, strides=(stride, 1), use_bias=False)(shortcut)))
    return L.ReLU()(L.Add()([y, shortcut]))


def build(p: Params, x: tf.Tensor, num_classes: int) -> tf.Tensor:
    frames, bins = x.shape[1], x.shape[2]
    x = L.Reshape((frames, 1, bins))(x)  # (frames, bins, 1) -> bins as channels
    x = L.Conv2D(p.stem, (3, 1), padding="same", use_bias=False)(x)
    for c, s in zip(p.channels, p.strides):
        x = _block(x, c, s, p.kernel)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dropout(p.dropout)(x)
    return L.Dense(num_classes)(x)
