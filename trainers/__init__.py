"""Model training. The only package of kws that imports TensorFlow."""

import os

# tfmot's pruning needs the Keras 2 API (tf-keras); must be set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
