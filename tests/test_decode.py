"""Decoding by content for every mode and format the dataset and uploads bring."""

import io

import numpy as np
import pytest
from PIL import Image

from lungct.config import DecodeConfig
from lungct.decode import DecodeError, decode_image


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def slice_l(sample_files) -> Image.Image:
    return Image.open(sample_files[0]).convert("L")


@pytest.mark.parametrize(
    "mode, fmt", [(m, "PNG") for m in ("L", "LA", "RGB", "RGBA", "P")] + [("L", "JPEG"), ("RGB", "JPEG")]
)
def test_modes_and_formats_decode_to_grey_unit(slice_l, mode, fmt):
    image = slice_l.convert(mode)
    out = decode_image(encode(image, fmt), "x")
    assert out.shape == (slice_l.height, slice_l.width)
    assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
    reference = np.asarray(slice_l, np.float32) / 255
    assert np.abs(out - reference).mean() < (0.02 if fmt == "JPEG" else 0.005)


def test_sixteen_bit_png_keeps_precision(slice_l):
    wide = (np.asarray(slice_l, np.uint16) * 257).astype(np.uint16)
    image = Image.fromarray(wide, mode="I;16")
    out = decode_image(encode(image, "PNG"), "x")
    assert np.allclose(out, np.asarray(slice_l, np.float32) / 255, atol=1e-4)


def test_jpeg_named_png_decodes_by_content(tmp_path, slice_l):
    path = tmp_path / "scan.png"
    path.write_bytes(encode(slice_l.convert("RGB"), "JPEG"))
    assert decode_image(path.read_bytes(), str(path)).shape == (slice_l.height, slice_l.width)


def test_exif_orientation_is_applied(slice_l):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    out = decode_image(encode(slice_l.convert("RGB"), "JPEG", exif=exif), "x")
    assert out.shape == (slice_l.width, slice_l.height)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"this is not an image at all", "not a recognised image format"),
    ],
)
def test_bad_bytes_raise_decode_error(data, reason):
    with pytest.raises(DecodeError) as info:
        decode_image(data, "upload.png")
    assert "upload.png" in str(info.value) and reason in str(info.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_raises_decode_error(slice_l, fmt):
    data = encode(slice_l, fmt)
    with pytest.raises(DecodeError) as info:
        decode_image(data[: len(data) // 2], "cut." + fmt.lower())
    assert "cut." in str(info.value)


def test_decompression_bomb_is_refused_before_decoding():
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(DecodeError, match="above the limit"):
        decode_image(data, "bomb.png", DecodeConfig(max_pixels=1_000_000))


def test_every_dataset_file_decodes(sample_files):
    for path in sample_files:
        assert decode_image(path.read_bytes(), str(path)).ndim == 2
