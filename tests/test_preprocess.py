import numpy as np
import pytest
from PIL import Image

from lungct.config import PreprocessConfig
from lungct.preprocess import load_file, preprocess


@pytest.mark.parametrize("size", [64, 128, 160])
def test_shape_range_and_dtype(sample_files, size):
    out = load_file(sample_files[0], PreprocessConfig(size=size))
    assert out.shape == (size, size, 1)
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.max() > 0.5


def test_deterministic(sample_files):
    config = PreprocessConfig()
    a, b = load_file(sample_files[1], config), load_file(sample_files[1], config)
    assert np.array_equal(a, b)


def test_blank_image_gives_zeros_not_nan():
    out = preprocess(np.zeros((50, 80), np.float32), PreprocessConfig(size=32))
    assert np.isfinite(out).all() and out.max() == 0.0


def test_rgb_and_size_shortcuts_are_removed(sample_files, tmp_path):
    """A tumour slice converted to RGB and scaled to a normal slice's size gives (almost) the same tensor."""
    config = PreprocessConfig()
    source = sample_files[0]
    grey = Image.open(source).convert("L")
    big = grey.convert("RGB").resize((grey.width * 3, grey.height * 3), Image.Resampling.BICUBIC)
    path = tmp_path / "big_rgb.png"
    big.save(path)
    a, b = load_file(source, config), load_file(path, config)
    assert np.abs(a - b).mean() < 0.03
