"""The Raspberry Pi side of kws: the little model, the Big/Little cascade client and its tools.

Imports numpy, a TFLite interpreter, requests and grpcio only; never TensorFlow.
"""
