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


def test_equalize_spreads_body_levels_evenly_and_keeps_background_black():
    rng = np.random.default_rng(0)
    image = np.zeros((64, 64), np.float32)
    image[8:56, 8:56] = rng.uniform(0.2, 0.5, (48, 48)) ** 3 + 0.15  # a dim, skewed body
    out = preprocess(image, PreprocessConfig(size=64, crop_foreground=False, intensity="equalize"))[..., 0]
    body = out[10:54, 10:54]
    assert out[:6].max() == 0.0 and out.max() == 1.0
    # equalised levels are close to uniform on (0, 1]: quartiles near 0.25, 0.5, 0.75
    np.testing.assert_allclose(np.percentile(body, [25, 50, 75]), [0.25, 0.5, 0.75], atol=0.05)


def test_equalize_ignores_any_monotonic_change_of_body_grey_levels():
    """Histogram equalisation depends only on the order of body grey levels, not on the export window."""
    from lungct.preprocess import equalize_body

    rng = np.random.default_rng(1)
    image = np.where(rng.random((40, 40)) < 0.3, 0.0, rng.uniform(0.12, 1.0, (40, 40))).astype(np.float32)
    rewindowed = np.where(image > 0.1, 0.1 + 0.9 * ((image - 0.1) / 0.9) ** 2.5, image).astype(np.float32)
    np.testing.assert_array_equal(equalize_body(image, 0.1), equalize_body(rewindowed, 0.1))


def _chest(height: int = 200, width: int = 300) -> np.ndarray:
    """A synthetic axial slice: black room, a grey body, two dark lungs inside it."""
    image = np.zeros((height, width), np.float32)
    image[20:180, 20:280] = 0.7                                # body
    image[60:140, 70:130] = image[60:140, 170:230] = 0.15     # lungs: rows 60-140, columns 70-230
    return image


def test_crop_to_lungs_frames_the_lungs_with_a_margin():
    from lungct.preprocess import crop_box

    image = _chest()
    assert crop_box(image, PreprocessConfig()) == (20, 180, 20, 280)          # the body
    top, bottom, left, right = crop_box(image, PreprocessConfig(crop_to="lungs", lung_margin=0.0))
    assert abs(top - 60) <= 3 and abs(bottom - 140) <= 3 and abs(left - 70) <= 3 and abs(right - 230) <= 3
    wide = crop_box(image, PreprocessConfig(crop_to="lungs", lung_margin=0.1))  # 10% of the 160-pixel side
    assert abs(wide[0] - (top - 16)) <= 2 and abs(wide[3] - (right + 16)) <= 2
    out = preprocess(image, PreprocessConfig(size=64, crop_to="lungs", lung_margin=0.0))[..., 0]
    assert 0 < out[32, 1] < 0.3 and 0 < out[32, 62] < 0.3 and out[32, 32] > 0.5  # lungs at both sides, body between
    assert out[:12].max() == 0.0  # the box is twice as wide as tall: black above and below


def test_stretching_fills_the_square_and_maps_back_onto_the_crop():
    from lungct.preprocess import framing, to_slice

    image = _chest()                                           # body 160 rows x 260 columns
    kept = preprocess(image, PreprocessConfig(size=64))[..., 0]
    assert kept[:10].max() == 0.0                              # padded above: the body is wider than tall
    config = PreprocessConfig(size=64, keep_aspect=False)
    stretched = preprocess(image, config)[..., 0]
    assert stretched[0].min() > 0 and stretched[-1].min() > 0  # the body reaches every side
    assert stretched[32, 20] < 0.3 and stretched[32, 32] > 0.5  # a lung, then the body between the lungs
    frame = framing(image, config)
    back = to_slice(np.ones((64, 64), np.float32), frame, image.shape)
    assert back[20:180, 20:280].min() == 1.0 and back.sum() == 160 * 260   # exactly the crop


def test_crop_to_lungs_falls_back_to_the_body_without_lungs():
    from lungct.preprocess import crop_box

    image = _chest()
    image[60:140, 70:230] = 0.7                                # no enclosed air: an abdominal slice
    assert crop_box(image, PreprocessConfig(crop_to="lungs")) == crop_box(image, PreprocessConfig())


def test_crop_to_lungs_on_real_slices(sample_files):
    """On real slices the lungs' box lies inside the body's box and is smaller."""
    from lungct.decode import decode_image
    from lungct.preprocess import crop_box

    for path in sample_files:
        image = decode_image(path.read_bytes(), str(path))
        body = crop_box(image, PreprocessConfig())
        lungs = crop_box(image, PreprocessConfig(crop_to="lungs", lung_margin=0.0))
        assert body[0] <= lungs[0] < lungs[1] <= body[1] and body[2] <= lungs[2] < lungs[3] <= body[3]
        assert (lungs[1] - lungs[0]) * (lungs[3] - lungs[2]) < (body[1] - body[0]) * (body[3] - body[2])
