"""The dataset's shortcuts (normal slices are larger and often RGB) must not drive predictions."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lungct.predictor import Predictor
from lungct.preprocess import load_tensor


def as_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def predictor(shipped_tag) -> Predictor:
    return Predictor.from_store(shipped_tag)


def test_rgb_and_normal_size_do_not_change_tumour_predictions(predictor, sample_files):
    config = predictor.info.preprocess
    tumours = [f for f in sample_files if f.parent.name != "normal"]
    normal_size = Image.open(next(f for f in sample_files if f.parent.name == "normal")).size
    for path in tumours:
        original = Image.open(path).convert("L")
        scale = max(normal_size[0] / original.width, normal_size[1] / original.height)
        disguised = original.convert("RGB").resize((round(original.width * scale), round(original.height * scale)),
                                                   Image.Resampling.BICUBIC)
        batch = np.stack([load_tensor(as_bytes(original), "orig", config), load_tensor(as_bytes(disguised), "big", config)])
        probabilities = predictor.probabilities(batch)
        assert probabilities[0].argmax() == probabilities[1].argmax(), path
        assert np.abs(probabilities[0] - probabilities[1]).max() < 0.1, (path, probabilities)
