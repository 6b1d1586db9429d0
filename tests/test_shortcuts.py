"""The dataset's shortcuts (normal slices are larger and often RGB) must not drive predictions.

Every tumour slice of Kaggle's valid split (or the committed samples without ../shared) is disguised
as a normal slice: converted to RGB and scaled up to a normal slice's size. The disguise must not
change any predicted class and must not move probability towards `normal` (the shortcut's
direction). Resampling does change the tensor slightly, so probabilities between two tumour classes
may move a little on slices near a boundary: bounded on average, and printed.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lungct.dataset import list_samples
from lungct.labels import CLASSES
from lungct.predictor import Predictor
from lungct.preprocess import load_tensor

NORMAL = CLASSES.index("normal")


def as_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def disguise(original: Image.Image, size: tuple[int, int]) -> Image.Image:
    scale = max(size[0] / original.width, size[1] / original.height)
    return original.convert("RGB").resize((round(original.width * scale), round(original.height * scale)),
                                          Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def predictor(shipped_tag) -> Predictor:
    return Predictor.from_store(shipped_tag)


def test_rgb_and_normal_size_do_not_change_tumour_predictions(predictor, eval_dir, sample_files):
    config = predictor.info.preprocess
    normal_size = Image.open(next(f for f in sample_files if f.parent.name == "normal")).size
    tumours = [s.path for s in list_samples(eval_dir) if s.label != NORMAL]
    originals = [Image.open(path).convert("L") for path in tumours]
    batch = [np.stack([load_tensor(as_bytes(image), "slice", config) for image in images])
             for images in (originals, [disguise(o, normal_size) for o in originals])]
    plain, disguised = (predictor.probabilities(b) for b in batch)
    change = np.abs(plain - disguised).max(axis=1)
    print(f"{len(tumours)} tumour slices: largest probability change mean {change.mean():.3f}, max {change.max():.3f}; "
          f"P(normal) change max {np.max(disguised[:, NORMAL] - plain[:, NORMAL]):+.4f}")
    assert len(tumours) >= 3
    changed = [str(p) for p, a, b in zip(tumours, plain.argmax(1), disguised.argmax(1)) if a != b]
    assert not changed, f"the disguise changed the predicted class of {changed}"
    assert np.all(disguised[:, NORMAL] - plain[:, NORMAL] < 0.05), "the disguise moves predictions towards normal"
    assert change.mean() < 0.03
