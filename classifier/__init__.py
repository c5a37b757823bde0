"""Classifier: image decoding and preprocessing, TensorFlow models, batched runtime, training."""
