"""BC-ResNet (Kim et al., "Broadcasted Residual Learning for Efficient Keyword Spotting", 2021).

Each BC-ResBlock has a 2-D frequency branch and a 1-D temporal branch:
  f2: frequency-depthwise 3x1 conv + SubSpectralNorm           -> x1 (time x freq x C)
  f1: average over frequency, temporal-depthwise 1x3 conv (dilated) + BN + swish, 1x1 conv, dropout
                                                               -> x2 (time x 1 x C)
  out = ReLU(x + x1 + x2), x2 broadcast over frequency (a transition block, which changes the channel
  count with a 1x1 conv + BN + ReLU before f2, drops the identity x).

Layout here is (frames, bins, channels): time is axis 1, frequency axis 2. The stem halves the bins
(40 -> 20) and the first block of stages 2 and 3 halves them again (20 -> 10 -> 5), as in the paper.
Time keeps its full resolution; dilations grow instead (halved from the paper's, since our hop is
20 ms rather than 10 ms). Layers get short names (TFLite keeps some; on a 20 KB budget bytes count).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

L = tf.keras.layers


@dataclasses.dataclass(frozen=True)
class Params:
    stem: int = 24
    channels: tuple[int, ...] = (12, 18, 24, 30)
    blocks: tuple[int, ...] = (2, 2, 4, 4)
    freq_strides: tuple[int, ...] = (1, 2, 2, 1)
    dilations: tuple[int, ...] = (1, 1, 2, 4)  # temporal dilation per stage
    head: int = 48
    sub_bands: int = 5
    dropout: float = 0.1
    head_dropout: float = 0.1
    swish: bool = False  # the paper's activation in f1; ReLU fuses into the conv (2 fewer int8 ops a block)


class SubSpectralNorm(L.Layer):
    """BatchNorm whose statistics and affine are per (sub-band, channel): the bins are split into
    ``sub_bands`` equal groups. At inference it is one multiply and one add by constant
    (1, 1, bins, channels) tensors, which convert to builtin int8 MUL and ADD."""

    def __init__(self, sub_bands: int, momentum: float = 0.99, epsilon: float = 1e-3, **kw) -> None:
        super().__init__(**kw)
        self.sub_bands, self.momentum, self.epsilon = sub_bands, momentum, epsilon

    def build(self, input_shape: tf.TensorShape) -> None:
        bins, ch = int(input_shape[2]), int(input_shape[3])
        if bins % self.sub_bands:
            raise ValueError(f"{bins} bins do not split into {self.sub_bands} sub-bands")
        shape = (self.sub_bands, ch)
        self.gamma = self.add_weight(name="g", shape=shape, initializer="ones")
        self.beta = self.add_weight(name="b", shape=shape, initializer="zeros")
        self.mean = self.add_weight(name="m", shape=shape, initializer="zeros", trainable=False)
        self.var = self.add_weight(name="v", shape=shape, initializer="ones", trainable=False)
        super().build(input_shape)

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        _, frames, bins, ch = x.shape
        if training:
            xs = tf.reshape(x, [-1, frames, self.sub_bands, bins // self.sub_bands, ch])
            mean, var = tf.nn.moments(xs, axes=[0, 1, 3])
            self.mean.assign(self.momentum * self.mean + (1 - self.momentum) * mean)
            self.var.assign(self.momentum * self.var + (1 - self.momentum) * var)
            scale = self.gamma * tf.math.rsqrt(var + self.epsilon)
            y = (xs - mean[:, None]) * scale[:, None] + self.beta[:, None]
            return tf.reshape(y, [-1, frames, bins, ch])
        scale = self.gamma * tf.math.rsqrt(self.var + self.epsilon)
        shift = self.beta - self.mean * scale
        per_bin = bins // self.sub_bands
        # Each channel's largest scale is a per-channel multiply, which the converter folds into the
        # preceding conv (per-channel int8 weights); the int8 MUL constant then only holds the ratios
        # in [-1, 1] between sub-bands. Multiplying by the raw scales instead put a per-tensor int8
        # constant over every channel's scale and cost 5-6 val points in int8.
        peak = tf.reduce_max(tf.abs(scale), axis=0) + 1e-6
        return (x * peak) * tf.repeat(scale / peak, per_bin, axis=0) + tf.repeat(shift, per_bin, axis=0)

    def get_config(self) -> dict:
        return {**super().get_config(), "sub_bands": self.sub_bands, "momentum": self.momentum,
                "epsilon": self.epsilon}


class _Taps(tf.keras.constraints.Constraint):
    """Keeps only every ``step``-th tap of a (2*step+1, 1) depthwise kernel: a dilated 3x1 kernel that
    converts to one plain DEPTHWISE_CONV_2D (a dilated Keras conv converts to SPACE_TO_BATCH_ND, the
    conv, BATCH_TO_SPACE_ND and shape ops for the dynamic batch). The zero taps cost little after zlib."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __call__(self, w: tf.Tensor) -> tf.Tensor:
        keep = tf.reshape(tf.cast(tf.range(w.shape[0]) % self.step == 0, w.dtype), [-1, 1, 1, 1])
        return w * keep

    def get_config(self) -> dict:
        return {"step": self.step}


def _block(x: tf.Tensor, p: Params, c: int, stride: int, dilation: int, tag: str) -> tf.Tensor:
    transition = x.shape[-1] != c or stride != 1
    y = x
    if transition:
        y = L.Conv2D(c, 1, use_bias=False, name=f"t{tag}")(y)
        y = L.ReLU(name=f"tr{tag}")(L.BatchNormalization(name=f"tn{tag}")(y))
    # f2: frequency-depthwise conv + SubSpectralNorm
    y = L.DepthwiseConv2D((1, 3), strides=(1, stride), padding="same", use_bias=False, name=f"f{tag}")(y)
    # (sub_bands=1 is a plain BatchNorm, which the converter folds into the conv: no MUL/ADD)
    x1 = SubSpectralNorm(p.sub_bands, name=f"s{tag}")(y) if p.sub_bands > 1 else L.BatchNormalization(name=f"s{tag}")(y)
    # f1: frequency average, temporal-depthwise conv, BN, swish, pointwise conv
    z = tf.reduce_mean(x1, axis=2, keepdims=True)
    z = L.DepthwiseConv2D((2 * dilation + 1, 1), padding="same", use_bias=False, name=f"d{tag}",
                          depthwise_constraint=_Taps(dilation) if dilation > 1 else None)(z)
    z = L.BatchNormalization(name=f"n{tag}")(z)
    z = L.Activation("swish", name=f"a{tag}")(z) if p.swish else L.ReLU(name=f"a{tag}")(z)
    z = L.Conv2D(c, 1, use_bias=False, name=f"p{tag}")(z)
    z = L.Dropout(p.dropout, name=f"o{tag}")(z)
    out = x1 + z if transition else x + x1 + z  # z broadcasts over frequency
    return L.ReLU(name=f"r{tag}")(out)


def build(p: Params, x: tf.Tensor, num_classes: int) -> tf.Tensor:
    x = L.Conv2D(p.stem, 5, strides=(1, 2), padding="same", use_bias=False, name="c0")(x)
    x = L.ReLU(name="r0")(L.BatchNormalization(name="n0")(x))
    for i, (c, n, s, d) in enumerate(zip(p.channels, p.blocks, p.freq_strides, p.dilations)):
        for j in range(n):
            x = _block(x, p, c, s if j == 0 else 1, d, f"{i}{j}")
    # head: depthwise 5x5 (valid) over the remaining bins and 5 frames, pointwise conv, time average
    x = L.DepthwiseConv2D((5, x.shape[2]), use_bias=False, name="hd")(x)
    x = L.Conv2D(p.head, 1, use_bias=False, name="hc")(x)
    x = L.ReLU(name="hr")(L.BatchNormalization(name="hn")(x))
    x = L.GlobalAveragePooling2D(name="g")(x)
    x = L.Dropout(p.head_dropout, name="d")(x)
    return L.Dense(num_classes, name="fc")(x)
