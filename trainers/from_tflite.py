"""Rebuilds a Keras model from a float .tflite graph, weights included, so a shipped model can be
quantized (trainers.quantize) without retraining: the int8 model is then the same function as the float
one, up to quantization, not a new training run. An int8 graph (full-integer, as the little models ship)
is rebuilt as float with its weights and biases dequantized (scale * (q - zero point)), to fine-tune it.

It reads the flatbuffer op by op and supports the ops the kws architectures export to: the input
normalisation (SUB, MUL by constants), RESHAPE, CONV_2D and DEPTHWISE_CONV_2D (batch norm already
folded in, fused ReLU/ReLU6), ADD, MAX_POOL_2D, MEAN over frames and bins, FULLY_CONNECTED and a final
SOFTMAX, which is dropped: the rebuilt model ends at its logits.
"""

from __future__ import annotations

from pathlib import Path

import trainers  # noqa: F401  (TF environment)

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

L = tf.keras.layers
_OPS = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_ACTIVATIONS = {0: None, 1: "relu", 3: "relu6"}
_PADDING = {0: "same", 1: "valid"}
_SHAPE_OPS = {"SHAPE", "STRIDED_SLICE", "PACK"}  # compute RESHAPE's shape tensor; Keras needs none


class Affine(L.Layer):
    """x - c or x * c with a constant of the input's trailing shape (the exported normalisation)."""

    def __init__(self, op: str, constant: np.ndarray, **kw: object) -> None:
        super().__init__(**kw)
        self.op, self.constant = op, tf.constant(constant, tf.float32)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x - self.constant if self.op == "SUB" else x * self.constant


def _op_name(model: schema.ModelT, op: schema.OperatorT) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    return _OPS[max(code.builtinCode, code.deprecatedBuiltinCode)]


def rebuild(path: str | Path) -> tuple[tf.keras.Model, list[str]]:
    """The Keras model (float input of the .tflite's shape without batch, logits out) and the op names."""
    model = flatbuffer_utils.read_model(str(path))
    graph = model.subgraphs[0]

    def const(i: int) -> np.ndarray | None:
        t = graph.tensors[i]
        data = model.buffers[t.buffer].data
        if data is None or len(data) == 0:
            return None
        dtype = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT32: np.int32,
                 schema.TensorType.INT8: np.int8}[t.type]
        x = np.frombuffer(bytes(data), dtype=dtype).reshape(t.shape)
        q = t.quantization
        if q is not None and q.scale is not None and len(q.scale):  # an int8 graph's weights and biases
            shape = [1] * x.ndim
            if len(q.scale) > 1:  # per-channel scales along quantizedDimension
                shape[q.quantizedDimension] = -1
            scale, zero = np.asarray(q.scale, np.float64), np.asarray(q.zeroPoint, np.float64)
            x = ((x.astype(np.float64) - zero.reshape(shape)) * scale.reshape(shape)).astype(np.float32)
        return x

    (inp_index,) = graph.inputs
    inp = tf.keras.Input(shape=tuple(int(d) for d in graph.tensors[inp_index].shape[1:]), name="x")
    values: dict[int, tf.Tensor] = {int(inp_index): inp}
    names: list[str] = []
    for k, op in enumerate(graph.operators):
        name = _op_name(model, op)
        names.append(name)
        ins, out, opt = [int(i) for i in op.inputs], int(op.outputs[0]), op.builtinOptions
        if name in _SHAPE_OPS:
            continue
        x = values.get(ins[0])
        if name in ("SUB", "MUL"):
            y = Affine(name, const(ins[1]), name=f"{name.lower()}{k}")(x)
        elif name == "RESHAPE":
            y = L.Reshape(tuple(int(d) for d in graph.tensors[out].shape[1:]), name=f"reshape{k}")(x)
        elif name == "CONV_2D":
            w, b = const(ins[1]), const(ins[2])
            layer = L.Conv2D(w.shape[0], w.shape[1:3], strides=(opt.strideH, opt.strideW),
                             padding=_PADDING[opt.padding], activation=_ACTIVATIONS[opt.fusedActivationFunction],
                             dilation_rate=(opt.dilationHFactor, opt.dilationWFactor), name=f"conv{k}")
            y = layer(x)
            layer.set_weights([w.transpose(1, 2, 3, 0), b])
        elif name == "DEPTHWISE_CONV_2D":
            w, b = const(ins[1]), const(ins[2])  # (1, kh, kw, channels * multiplier)
            channels = int(x.shape[-1])
            layer = L.DepthwiseConv2D(w.shape[1:3], strides=(opt.strideH, opt.strideW), padding=_PADDING[opt.padding],
                                      depth_multiplier=opt.depthMultiplier,
                                      activation=_ACTIVATIONS[opt.fusedActivationFunction], name=f"dw{k}")
            y = layer(x)
            layer.set_weights([w.reshape(*w.shape[1:3], channels, opt.depthMultiplier), b])
        elif name == "ADD":
            y = L.Add(name=f"add{k}")([x, values[ins[1]]])
            if (act := _ACTIVATIONS[opt.fusedActivationFunction]) is not None:
                y = L.Activation(act, name=f"act{k}")(y)
        elif name == "MAX_POOL_2D":
            y = L.MaxPool2D((opt.filterHeight, opt.filterWidth), strides=(opt.strideH, opt.strideW),
                            padding=_PADDING[opt.padding], name=f"pool{k}")(x)
        elif name == "MEAN":
            axes = sorted(int(a) for a in const(ins[1]).ravel())
            if axes != [1, 2] or opt.keepDims:
                raise NotImplementedError(f"MEAN over {axes} (keepDims {opt.keepDims})")
            y = L.GlobalAveragePooling2D(name=f"mean{k}")(x)
        elif name == "FULLY_CONNECTED":
            w, b = const(ins[1]), const(ins[2])
            layer = L.Dense(w.shape[0], activation=_ACTIVATIONS[opt.fusedActivationFunction], name=f"fc{k}")
            y = layer(x)
            layer.set_weights([w.T, b])
        elif name in ("QUANTIZE", "DEQUANTIZE"):
            y = x  # the rebuilt model is float throughout
        elif name == "SOFTMAX" and k == len(graph.operators) - 1:
            continue  # logits out; the kws runtime applies softmax in float32
        else:
            raise NotImplementedError(f"op {name} (#{k}) of {path}")
        values[out] = y
    last = int(graph.operators[-1].inputs[0] if names[-1] == "SOFTMAX" else graph.operators[-1].outputs[0])
    return tf.keras.Model(inp, values[last], name=Path(path).stem), names
