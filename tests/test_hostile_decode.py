"""Property-based: whatever bytes arrive, decode + preprocess returns a valid tensor or raises DecodeError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lungct.config import PreprocessConfig
from lungct.decode import DecodeError
from lungct.preprocess import load_tensor

CONFIG = PreprocessConfig(size=64)
SETTINGS = settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.too_slow])


def check(data: bytes) -> None:
    try:
        tensor = load_tensor(data, "fuzz", CONFIG)
    except DecodeError as exc:
        assert str(exc).startswith("fuzz: ")
        return
    assert tensor.shape == (64, 64, 1) and tensor.dtype == np.float32
    assert np.isfinite(tensor).all() and tensor.min() >= 0.0 and tensor.max() <= 1.0


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _bases() -> dict[str, bytes]:
    from pydicom.data import get_testdata_file

    rng = np.random.default_rng(0)
    grey = Image.fromarray(rng.integers(0, 255, (40, 60), dtype=np.uint8))
    frames = [grey, grey.rotate(90), grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return {
        "png": encode(grey, "PNG"),
        "png_rgba": encode(grey.convert("RGBA"), "PNG"),
        "png16": encode(Image.fromarray((np.asarray(grey, np.uint16) * 257).astype(np.uint16), "I;16"), "PNG"),
        "png_palette": encode(grey.convert("P"), "PNG"),
        "jpeg": encode(grey.convert("RGB"), "JPEG"),
        "jpeg_cmyk": encode(grey.convert("CMYK"), "JPEG"),
        "gif_frames": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "tiff_frames": encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "tiff_float": encode(Image.fromarray(rng.normal(size=(30, 30)).astype(np.float32), "F"), "TIFF"),
        "dicom_ct": open(get_testdata_file("CT_small.dcm"), "rb").read(),
        "dicom_mr": open(get_testdata_file("MR_small.dcm"), "rb").read(),
    }


BASES = _bases()


@pytest.mark.parametrize("name", sorted(BASES))
def test_every_base_format_is_handled(name):
    check(BASES[name])


@pytest.mark.parametrize("size", [(1, 1), (1, 50000), (50000, 1), (3, 2)])
def test_extreme_sizes(size):
    check(encode(Image.new("L", size, 128), "PNG"))


@SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    check(data)


@SETTINGS
@given(st.sampled_from(sorted(BASES)), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8))
def test_flipped_bytes(name, flips):
    data = bytearray(BASES[name])
    for position, value in flips:
        data[position % len(data)] = value
    check(bytes(data))


@SETTINGS
@given(st.sampled_from(sorted(BASES)), st.floats(0, 1))
def test_cut_files(name, fraction):
    data = BASES[name]
    check(data[: int(len(data) * fraction)])


@SETTINGS
@given(st.sampled_from(sorted(BASES)), st.binary(min_size=1, max_size=2048))
def test_appended_bytes(name, tail):
    check(BASES[name] + tail)
