"""Decoding of uploads and dataset files into a greyscale float image in [0, 1].

Formats are recognised by content, never by file name: PNG (8 and 16 bit), JPEG,
any other format Pillow reads, and DICOM (``DICM`` at offset 128).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lungct.config import DecodeConfig

DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"


class DecodeError(ValueError):
    """The one error raised for input that is not a usable image; names the file and the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def is_dicom(data: bytes) -> bool:
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC


def decode_image(data: bytes, name: str = "<upload>", config: DecodeConfig = DecodeConfig()) -> np.ndarray:
    """Decode bytes into a 2-D float32 array in [0, 1], or raise DecodeError."""
    if not data:
        raise DecodeError(name, "the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pydicom warns on every malformed element
            if is_dicom(data):
                return _decode_dicom(data, name, config)
            return _decode_raster(data, name, config)
    except DecodeError:
        raise
    except Exception as exc:  # any decoder failure on hostile bytes is a decode error
        raise DecodeError(name, f"cannot decode image ({type(exc).__name__}: {exc})") from exc


def _decode_raster(data: bytes, name: str, config: DecodeConfig) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise DecodeError(name, "not a recognised image format (PNG, JPEG or DICOM expected)") from exc
    width, height = image.size
    if width * height > config.max_pixels:
        raise DecodeError(name, f"image has {width}x{height} pixels, above the limit of {config.max_pixels}")
    if width < 1 or height < 1:
        raise DecodeError(name, "image has no pixels")
    image.load()
    image = ImageOps.exif_transpose(image)
    return _to_grey_unit(image)


def _to_grey_unit(image: Image.Image) -> np.ndarray:
    """Any Pillow mode to greyscale float32 in [0, 1], keeping 16-bit precision."""
    if image.mode in ("L", "RGB", "RGBA"):
        # the common case, bit-identical to the general path: one conversion (RGBA -> L gives the same
        # luma as RGBA -> RGB -> L), no NaN/clip passes (k / 255 is already finite and in [0, 1])
        grey = image if image.mode == "L" else image.convert("L")
        return np.asarray(grey, dtype=np.float32) / np.float32(255.0)
    return np.clip(np.nan_to_num(_grey(image), nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def _grey(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return np.clip(array / top, 0.0, 1.0)
    if image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(array.min()), float(array.max())
        return (array - low) / (high - low) if high > low else np.zeros_like(array)
    if image.mode != "L":
        image = image.convert("RGB" if image.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV", "1") else image.mode)
        image = image.convert("L")
    return np.asarray(image, dtype=np.float32) / 255.0


def _decode_dicom(data: bytes, name: str, config: DecodeConfig) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    dataset = pydicom.dcmread(io.BytesIO(data))
    modality = str(getattr(dataset, "Modality", "")).upper()
    if modality != "CT":
        raise DecodeError(name, f"DICOM modality is {modality or 'missing'}, only CT is supported")
    if "PixelData" not in dataset:
        raise DecodeError(name, "DICOM file has no pixel data")
    rows, cols = int(dataset.Rows), int(dataset.Columns)
    if rows * cols > config.max_pixels:
        raise DecodeError(name, f"image has {cols}x{rows} pixels, above the limit of {config.max_pixels}")
    pixels = dataset.pixel_array
    if pixels.ndim != 2:
        raise DecodeError(name, f"DICOM pixel data has shape {pixels.shape}, one 2-D slice expected")
    hounsfield = apply_modality_lut(pixels, dataset).astype(np.float32)
    low = config.dicom_window_center - config.dicom_window_width / 2
    return np.clip((hounsfield - low) / config.dicom_window_width, 0.0, 1.0)
