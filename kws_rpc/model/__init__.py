"""The model runtime: a TFLite model with its card, the transport-free inference core, the vote."""
