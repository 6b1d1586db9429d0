"""The one path from a decoded slice to the model's input tensor, used by training, evaluation and serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lungct.config import DecodeConfig, PreprocessConfig
from lungct.decode import decode_image


def foreground_box(image: np.ndarray, threshold: float, min_fraction: float = 0.02) -> tuple[int, int, int, int]:
    """Bounding box (top, bottom, left, right) of rows/columns where the body is present."""
    mask = image > threshold
    rows = np.flatnonzero(mask.mean(axis=1) > min_fraction)
    cols = np.flatnonzero(mask.mean(axis=0) > min_fraction)
    if rows.size == 0 or cols.size == 0:
        return 0, image.shape[0], 0, image.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    source = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    return np.asarray(source.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def fit_into_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the longer side is `size` (aspect kept), then centre on a black size x size canvas."""
    height, width = image.shape
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = resize(image, new_w, new_h)
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out


def stretch_contrast(image: np.ndarray, low_percentile: float, high_percentile: float) -> np.ndarray:
    low, high = np.percentile(image, (low_percentile, high_percentile)).astype(np.float32)
    if high <= low:
        return np.zeros_like(image)
    return np.clip((image - low) / (high - low), 0.0, 1.0, dtype=np.float32)


def preprocess(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Greyscale [0, 1] slice -> float32 tensor (size, size, 1) in [0, 1].

    Crops to the body so the framing and export size of a slice do not matter, resizes
    keeping the aspect ratio (black padding), then stretches contrast between percentiles.
    """
    image = np.asarray(image, dtype=np.float32)
    if config.crop_foreground:
        top, bottom, left, right = foreground_box(image, config.foreground_threshold)
        image = image[top:bottom, left:right]
    image = fit_into_square(image, config.size)
    image = stretch_contrast(image, config.low_percentile, config.high_percentile)
    return image[..., np.newaxis]


def load_tensor(
    data: bytes, name: str, config: PreprocessConfig, decode_config: DecodeConfig = DecodeConfig()
) -> np.ndarray:
    """Decode bytes and preprocess them: what the service and the evaluator both call."""
    return preprocess(decode_image(data, name, decode_config), config)


def load_file(path: Path, config: PreprocessConfig) -> np.ndarray:
    path = Path(path)
    return load_tensor(path.read_bytes(), str(path), config)
