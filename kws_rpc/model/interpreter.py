"""The one TFLite interpreter loader: ai_edge_litert, else tflite_runtime, else tensorflow.lite.

Interpreters are not thread-safe; callers give each thread its own (see kws_rpc.model.kws_model).
"""

from __future__ import annotations

import sys
from typing import Any


def interpreter_class() -> type:
    # In a process that already imported TensorFlow (training), its own interpreter is the safe one:
    # tflite_runtime fails after TF is loaded (vector::reserve).
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        return tf.lite.Interpreter
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        import tensorflow as tf

        return tf.lite.Interpreter
    except ImportError:
        raise ImportError(
            "no TFLite interpreter found: pip install ai-edge-litert (or tflite-runtime on numpy < 2)"
        ) from None


def make_interpreter(model_content: bytes, num_threads: int = 1) -> Any:
    interp = interpreter_class()(model_content=model_content, num_threads=num_threads)
    interp.allocate_tensors()
    return interp
