"""The one path from a decoded slice to the model's input tensor, used by training, evaluation and serving."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

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


def otsu_threshold(values: np.ndarray, bins: int = 64) -> float:
    """The intensity in [0, 1] that best separates the two modes of a histogram (Otsu's method)."""
    counts, _ = np.histogram(values, bins=bins, range=(0.0, 1.0))
    share = np.cumsum(counts) / counts.sum()
    mean = np.cumsum(counts * np.arange(bins)) / counts.sum()
    between = (mean[-1] * share - mean) ** 2 / (share * (1 - share) + 1e-12)
    return (int(np.argmax(between)) + 0.5) / bins


def enclosed(mask: np.ndarray) -> np.ndarray:
    """The part of a boolean mask not 4-connected to the image border (for air: the lungs, not the room).
    The outside is grown from the border one pixel per step, whole arrays at a time."""
    air = np.pad(np.asarray(mask, dtype=bool), 1, constant_values=True)
    outside = np.zeros_like(air)
    outside[[0, -1], :] = outside[:, [0, -1]] = True
    while True:
        grown = outside.copy()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= air
        if np.array_equal(grown, outside):
            return (air & ~outside)[1:-1, 1:-1]
        outside = grown


def shrink(image: np.ndarray, work: int, config: PreprocessConfig) -> tuple[np.ndarray, float]:
    """The slice scaled so its longer side is `work` pixels, contrast-stretched; and the scale used."""
    scale = work / max(image.shape)
    small = resize(image, max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return stretch_contrast(small, config.low_percentile, config.high_percentile), scale


def lungs_box(small: np.ndarray) -> tuple[int, int, int, int] | None:
    """Box (top, bottom, left, right) of the air the body encloses in a shrunk slice: below Otsu's threshold
    after a slight blur, not connected to the border. None when there is none (no lungs in the slice)."""
    blurred = Image.fromarray(np.uint8(small * 255)).filter(ImageFilter.GaussianBlur(max(small.shape) / 64))
    smooth = np.asarray(blurred, np.float32) / 255
    lungs = enclosed(smooth < otsu_threshold(smooth))
    return foreground_box(lungs.astype(np.float32), 0.5) if lungs.any() else None


def crop_box(image: np.ndarray, config: PreprocessConfig, work: int = 128) -> tuple[int, int, int, int]:
    """What the model sees of a slice (top, bottom, left, right): all of it, the body, or the lungs' box with a
    margin (found on a `work`-pixel copy; the body when no lungs are found)."""
    if not config.crop_foreground:
        return 0, image.shape[0], 0, image.shape[1]
    if config.crop_to == "lungs":
        small, scale = shrink(image, work, config)
        box = lungs_box(small)
        if box is not None:
            top, bottom, left, right = box
            pad = config.lung_margin * max(bottom - top, right - left)
            return (max(0, int((top - pad) / scale)), min(image.shape[0], int(np.ceil((bottom + pad) / scale))),
                    max(0, int((left - pad) / scale)), min(image.shape[1], int(np.ceil((right + pad) / scale))))
    return foreground_box(image, config.foreground_threshold)


@dataclass(frozen=True)
class Framing:
    """Where the model's square input came from in the decoded slice: crop box, then scaled content
    of size (height, width) placed at (pad_top, pad_left) on the square."""

    top: int
    bottom: int
    left: int
    right: int
    height: int
    width: int
    pad_top: int
    pad_left: int


def framing(image: np.ndarray, config: PreprocessConfig) -> Framing:
    top, bottom, left, right = crop_box(image, config)
    if not config.keep_aspect:
        return Framing(top, bottom, left, right, config.size, config.size, 0, 0)
    scale = config.size / max(bottom - top, right - left)
    height, width = max(1, round((bottom - top) * scale)), max(1, round((right - left) * scale))
    return Framing(top, bottom, left, right, height, width, (config.size - height) // 2, (config.size - width) // 2)


def fit_into_square(image: np.ndarray, frame: Framing, size: int) -> np.ndarray:
    """Crop, resize to the frame's height and width, and centre on a black size x size canvas."""
    out = np.zeros((size, size), dtype=np.float32)
    crop = image[frame.top : frame.bottom, frame.left : frame.right]
    out[frame.pad_top : frame.pad_top + frame.height, frame.pad_left : frame.pad_left + frame.width] = resize(
        crop, frame.width, frame.height
    )
    return out


def to_slice(square: np.ndarray, frame: Framing, shape: tuple[int, int]) -> np.ndarray:
    """Map a (size, size) map over the model's input back onto the decoded slice's pixels."""
    content = square[frame.pad_top : frame.pad_top + frame.height, frame.pad_left : frame.pad_left + frame.width]
    out = np.zeros(shape, dtype=np.float32)
    out[frame.top : frame.bottom, frame.left : frame.right] = resize(content, frame.right - frame.left, frame.bottom - frame.top)
    return out


def stretch_contrast(image: np.ndarray, low_percentile: float, high_percentile: float) -> np.ndarray:
    low, high = np.percentile(image, (low_percentile, high_percentile)).astype(np.float32)
    if high <= low:
        return np.zeros_like(image)
    return np.clip((image - low) / (high - low), 0.0, 1.0, dtype=np.float32)


def equalize_body(image: np.ndarray, threshold: float) -> np.ndarray:
    """Histogram equalisation over the body: each body pixel becomes the fraction of body pixels at or below
    it, so the slice's grey levels are spread evenly whatever window it was exported with; background stays 0."""
    body = image > threshold
    if not body.any():
        return np.zeros_like(image, dtype=np.float32)
    ordered = np.sort(image[body])
    out = np.zeros_like(image, dtype=np.float32)
    out[body] = np.searchsorted(ordered, image[body], side="right") / ordered.size
    return out


def normalise_intensity(square: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    if config.intensity == "equalize":
        return equalize_body(square, config.foreground_threshold)
    return stretch_contrast(square, config.low_percentile, config.high_percentile)


def preprocess(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Greyscale [0, 1] slice -> float32 tensor (size, size, 1) in [0, 1].

    Crops to the body so the framing and export size of a slice do not matter, resizes
    keeping the aspect ratio (black padding), then normalises intensity (`config.intensity`).
    """
    return preprocess_framed(image, config)[0]


def preprocess_framed(image: np.ndarray, config: PreprocessConfig) -> tuple[np.ndarray, Framing]:
    """`preprocess`, also returning the framing (for mapping explanations back onto the slice)."""
    image = np.asarray(image, dtype=np.float32)
    frame = framing(image, config)
    square = normalise_intensity(fit_into_square(image, frame, config.size), config)
    return square[..., np.newaxis], frame


def load_tensor(
    data: bytes, name: str, config: PreprocessConfig, decode_config: DecodeConfig = DecodeConfig()
) -> np.ndarray:
    """Decode bytes and preprocess them: what the service and the evaluator both call."""
    return preprocess(decode_image(data, name, decode_config), config)


def load_file(path: Path, config: PreprocessConfig) -> np.ndarray:
    path = Path(path)
    return load_tensor(path.read_bytes(), str(path), config)
