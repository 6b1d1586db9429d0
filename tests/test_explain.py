"""Grad-CAM: offline (training.explain) and served (/explain)."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from lungct.decode import decode_image
from lungct.explain import body_mask, grad_cam, overlay_png
from lungct.predictor import Predictor
from lungct.preprocess import preprocess_framed
from tests.conftest import KAGGLE
from training import explain


@pytest.fixture(scope="module")
def predictor(shipped_tag) -> Predictor:
    return Predictor.from_store(shipped_tag)


def tumour_slices(sample_files) -> list:
    if KAGGLE.is_dir():
        folders = [d for d in (KAGGLE / "valid").iterdir() if not d.name.startswith("normal")]
        return [f for d in sorted(folders) for f in sorted(d.iterdir())[:4]]
    return [f for f in sample_files if f.parent.name != "normal"]


def test_offline_explain_writes_a_png_of_the_input_size(shipped_tag, sample_files, tmp_path, capsys):
    out = tmp_path / "cam.png"
    assert explain.main([str(sample_files[0]), "--out", str(out), "--model", shipped_tag]) == 0
    assert Image.open(out).size == Image.open(sample_files[0]).size
    assert '"class"' in capsys.readouterr().out


def test_heat_map_mass_lies_on_the_body(predictor, sample_files):
    fractions = []
    for path in tumour_slices(sample_files):
        image = decode_image(path.read_bytes(), str(path))
        tensor, frame = preprocess_framed(image, predictor.info.preprocess)
        _, cam = grad_cam(predictor.model, tensor)
        _, heat = overlay_png(image, cam, frame)
        assert heat.shape == image.shape
        if heat.sum() > 0:
            fractions.append(heat[body_mask(image)].sum() / heat.sum())
    assert fractions and np.median(fractions) > 0.5, fractions
    assert np.mean(np.array(fractions) > 0.5) >= 0.75, fractions


def test_explain_endpoint(server, sample_files, shipped_tag):
    data = sample_files[2].read_bytes()
    response = httpx.post(f"{server.url}/explain", files={"image": ("x.png", data)}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    predicted = httpx.post(f"{server.url}/predict", files={"image": ("x.png", data)}, timeout=60).json()
    assert body["class"] == predicted["class"] and body["model"] == shipped_tag
    assert body["confidence"] == pytest.approx(predicted["confidence"], abs=1e-5)
    heat = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"])))
    assert heat.format == "PNG" and heat.size == Image.open(io.BytesIO(data)).size
    bad = httpx.post(f"{server.url}/explain", files={"image": ("x.png", b"nope")}, timeout=60)
    assert bad.status_code == 400 and "error" in bad.json()
