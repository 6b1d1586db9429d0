"""Grad-CAM explanations: which part of the slice drove the prediction."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from lungct.preprocess import Framing, to_slice

TARGET_LAYER_SUFFIX = "_out"  # the last residual block's output


def last_block(model) -> str:
    return [layer.name for layer in model.layers if layer.name.endswith(TARGET_LAYER_SUFFIX)][-1]


def grad_cam(model, tensor: np.ndarray, class_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits, heat-map over the model input in [0, 1]) for one (size, size, 1) tensor.

    For an ensemble the score is the members' mean logit, so each member's last-block features are
    weighted by the gradient of that mean; the maps are summed before the ReLU."""
    import keras
    import tensorflow as tf

    from lungct.model import ensemble_members

    inners = [keras.Model(m.inputs, [m.get_layer(last_block(m)).output, m.outputs[0]]) for m in ensemble_members(model)]
    batch = tf.convert_to_tensor(tensor[np.newaxis], tf.float32)
    with tf.GradientTape() as tape:
        outputs = [inner(batch, training=False) for inner in inners]
        features = [f for f, _ in outputs]
        logits = tf.add_n([l for _, l in outputs]) / len(outputs)
        index = int(tf.argmax(logits[0])) if class_index is None else class_index
        score = logits[0, index]
    grads = tape.gradient(score, features)
    maps = [tf.reduce_sum(f[0] * tf.reduce_mean(g[0], axis=(0, 1)), axis=-1) for f, g in zip(features, grads)]
    cam = tf.nn.relu(tf.add_n(maps)).numpy()
    size = tensor.shape[0]
    cam = np.asarray(Image.fromarray(cam.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR))
    cam = cam / cam.max() if cam.max() > 0 else cam
    return logits.numpy()[0], cam.astype(np.float32)


def body_mask(image: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """The body: pixels above `threshold`, with each row filled between its outermost body pixels
    (so the dark lungs inside the body count as body)."""
    bright = image > threshold
    mask = np.zeros_like(bright)
    for row, line in enumerate(bright):
        cols = np.flatnonzero(line)
        if cols.size:
            mask[row, cols[0] : cols[-1] + 1] = True
    return mask


def overlay_png(image: np.ndarray, cam_on_model_input: np.ndarray, frame: Framing) -> tuple[bytes, np.ndarray]:
    """PNG (the slice's own size) of the heat-map over the slice, and the heat-map on the slice's pixels."""
    import matplotlib

    heat = to_slice(cam_on_model_input, frame, image.shape)
    colours = matplotlib.colormaps["jet"](heat)[..., :3]
    grey = np.repeat(image[..., np.newaxis], 3, axis=-1)
    alpha = 0.45 * heat[..., np.newaxis]
    blended = (grey * (1 - alpha) + colours * alpha).clip(0, 1)
    buf = io.BytesIO()
    Image.fromarray((blended * 255).astype(np.uint8), "RGB").save(buf, "PNG")
    return buf.getvalue(), heat
