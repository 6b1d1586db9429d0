"""The model call shared by evaluation and serving: batch of tensors in, calibrated probabilities out."""

from __future__ import annotations

import numpy as np

from lungct.store import ModelInfo, load_from_store


def softmax(logits: np.ndarray, temperature: float = 1.0, class_bias=0.0) -> np.ndarray:
    """softmax(logits / temperature + class_bias) over the last axis."""
    z = np.asarray(logits, dtype=np.float64) / temperature + np.asarray(class_bias, dtype=np.float64)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


class Predictor:
    """A Keras model with a compiled inference function and its metadata."""

    def __init__(self, model, info: ModelInfo, tag: str = "", created: str = "") -> None:
        import tensorflow as tf

        self.model, self.info, self.tag, self.created = model, info, tag, created
        size = info.preprocess.size
        spec = tf.TensorSpec((None, size, size, model.input_shape[-1]), tf.float32)
        self._logits = tf.function(lambda x: model(x, training=False), input_signature=[spec])

    @classmethod
    def from_store(cls, tag: str = "lungct:latest") -> "Predictor":
        return cls(*load_from_store(tag))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self._logits(np.asarray(batch, dtype=np.float32)).numpy()

    def calibrated(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities from logits with the model's calibration (temperature and class bias)."""
        return softmax(logits, self.info.temperature, self.info.class_bias)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self.calibrated(self.logits(batch))
