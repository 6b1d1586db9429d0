"""Against a real `bentoml serve` of the shipped model: endpoints, clients, bad inputs, batching, load."""

from __future__ import annotations

import asyncio
import io
import re

import httpx
import numpy as np
import pytest
from PIL import Image

from benchmarks.loadgen import load
from lungct.labels import CLASSES
from lungct.predictor import Predictor
from lungct.preprocess import load_file
from training.evaluate import predict_files


def post(server, files, route="/predict", **kw):
    return httpx.post(f"{server.url}{route}", files=files, timeout=60, **kw)


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def assert_prediction(body: dict, tag: str) -> None:
    assert body["class"] in CLASSES
    assert set(body["probabilities"]) == set(CLASSES)
    assert body["confidence"] == pytest.approx(max(body["probabilities"].values()))
    assert body["probabilities"][body["class"]] == body["confidence"]
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert body["model"] == tag


def test_predict_every_sample(server, sample_files, shipped_tag):
    for path in sample_files:
        response = post(server, {"image": (path.name, path.read_bytes(), "image/png")})
        assert response.status_code == 200, response.text
        assert_prediction(response.json(), shipped_tag)


def test_service_and_evaluator_see_the_same_tensor(server, sample_files, shipped_tag, tmp_path):
    """Same file: /predict and training.evaluate's model call agree to 1e-5."""
    predictor = Predictor.from_store(shipped_tag)
    folder = tmp_path / "normal"
    folder.mkdir()
    for path in sample_files:
        (folder / path.name).write_bytes(path.read_bytes())
    _, evaluator_probs, loaded = predict_files(predictor, tmp_path)
    for path, expected in zip(loaded.samples, evaluator_probs):
        served = post(server, {"image": (path.path.name, path.path.read_bytes())}).json()["probabilities"]
        assert np.allclose([served[c] for c in CLASSES], expected, atol=1e-5)
        assert np.array_equal(load_file(path.path, predictor.info.preprocess)[None],
                              loaded.images[loaded.samples.index(path)][None])


def test_predict_batch_keeps_order_and_isolates_bad_files(server, sample_files, shipped_tag):
    good = [p.read_bytes() for p in sample_files[:3]]
    files = [("images", ("a.png", good[0])), ("images", ("bad.png", b"garbage")), ("images", ("b.png", good[1])),
             ("images", ("c.png", good[2]))]
    response = post(server, files, "/predict_batch")
    assert response.status_code == 200, response.text
    items = response.json()
    assert [item["index"] for item in items] == [0, 1, 2, 3]
    assert items[1]["prediction"] is None and "not a recognised image" in items[1]["error"]
    singles = [post(server, {"image": ("x.png", data)}).json() for data in good]
    for item, single in zip([items[0], items[2], items[3]], singles):
        assert item["error"] is None
        assert_prediction(item["prediction"], shipped_tag)
        assert item["prediction"]["class"] == single["class"]
        for c in CLASSES:
            assert item["prediction"]["probabilities"][c] == pytest.approx(single["probabilities"][c], abs=1e-5)


def test_model_endpoint(server, shipped_tag):
    for path in ("/model", "/model/"):
        response = httpx.get(f"{server.url}{path}", follow_redirects=False)
        assert response.status_code == 200
    info = response.json()
    assert info["tag"] == shipped_tag and info["classes"] == list(CLASSES)
    assert info["input_size"] == info["preprocess"]["size"]
    assert "valid" in info["metrics"] and info["created"]
    from lungct.store import read_info

    stored, _, _ = read_info(shipped_tag)  # the calibration the answers use
    assert info["temperature"] == stored.temperature and list(info["class_bias"].values()) == stored.class_bias
    assert list(info["class_bias"]) == list(CLASSES) and any(stored.class_bias)


def test_openapi_describes_the_answer(server):
    spec = httpx.get(f"{server.url}/docs.json").json()
    text = str(spec)
    assert "Research use only, not for diagnosis" in spec["paths"]["/predict"]["post"]["description"]
    schema = spec["components"]["schemas"]
    prediction = next(v for k, v in schema.items() if "class" in v.get("properties", {}))
    assert {"class", "confidence", "probabilities", "model"} <= set(prediction["properties"])
    assert "multipart/form-data" in text


def test_python_clients(server, sample_files, shipped_tag):
    import bentoml

    with bentoml.SyncHTTPClient(server.url) as client:
        one_by_one = [client.predict(image=path) for path in sample_files]
    for body in one_by_one:
        assert_prediction(body, shipped_tag)

    async def use_async(images):  # opened images, not paths: the README says why
        async with bentoml.AsyncHTTPClient(server.url) as client:
            return await asyncio.gather(*(client.predict(image=image) for image in images))

    images = [Image.open(path) for path in sample_files]
    together = asyncio.run(use_async(images))
    for image in images:
        image.close()
    for alone, concurrent in zip(one_by_one, together, strict=True):
        assert concurrent["class"] == alone["class"]
        assert concurrent["probabilities"] == pytest.approx(alone["probabilities"], abs=1e-4)


def test_dicom_ct_is_classified_and_non_ct_refused(server, shipped_tag):
    import pydicom
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    response = post(server, {"image": ("ct.dcm", open(ct, "rb").read())})
    assert response.status_code == 200, response.text
    assert_prediction(response.json(), shipped_tag)

    mr = get_testdata_file("MR_small.dcm")
    response = post(server, {"image": ("mr.dcm", open(mr, "rb").read())})
    assert response.status_code == 400 and "only CT" in response.json()["error"]

    dataset = pydicom.dcmread(ct)
    del dataset.PixelData
    buf = io.BytesIO()
    dataset.save_as(buf)
    response = post(server, {"image": ("nopixels.dcm", buf.getvalue())})
    assert response.status_code == 400 and "no pixel data" in response.json()["error"]


@pytest.fixture(scope="module")
def bad_inputs(sample_files):
    png = sample_files[0].read_bytes()
    jpeg = png_bytes(Image.open(sample_files[0]).convert("RGB"), "JPEG")
    bomb = png_bytes(Image.new("L", (8000, 8000)))
    return {
        "not an image": ({"image": ("a.png", b"hello world")}, 400, "not a recognised image"),
        "empty file": ({"image": ("a.png", b"")}, 400, "empty"),
        "truncated png": ({"image": ("a.png", png[: len(png) // 2])}, 400, "cannot decode"),
        "truncated jpeg": ({"image": ("a.jpg", jpeg[: len(jpeg) // 3])}, 400, "cannot decode"),
        "decompression bomb": ({"image": ("a.png", bomb)}, 400, "above the limit"),
        "too large": ({"image": ("a.png", b"\0" * (21 * 1024 * 1024))}, 413, "larger than the limit"),
        "missing field": ({"other": ("a.png", png)}, 400, "'image' is required"),
        "wrong field name": ({"file": ("a.png", png)}, 400, "'image' is required"),
        "several files": ([("image", ("a.png", png)), ("image", ("b.png", png))], 400, "exactly one file"),
        "text instead of file": ([("image", (None, b"http://127.0.0.1/x.png"))], 400, "must be a file"),
    }


@pytest.mark.parametrize("case", ["not an image", "empty file", "truncated png", "truncated jpeg",
                                  "decompression bomb", "too large", "missing field", "wrong field name",
                                  "several files", "text instead of file"])
def test_bad_input_gets_a_json_4xx(server, bad_inputs, case, sample_files):
    files, status, message = bad_inputs[case]
    response = post(server, files)
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, dict) and message in body["error"]
    assert post(server, {"image": ("ok.png", sample_files[0].read_bytes())}).status_code == 200


@pytest.mark.parametrize("body, content_type", [(b'{"image": "/etc/passwd"}', "application/json"),
                                                (b"", "text/plain"), (b"--x\r\n\r\n", "multipart/form-data"),
                                                (b"--b\r\nno headers\r\n--b--\r\n", "multipart/form-data; boundary=b")])
def test_non_multipart_and_malformed_bodies_are_refused(server, body, content_type):
    response = httpx.post(f"{server.url}/predict", content=body, headers={"content-type": content_type}, timeout=60)
    assert response.status_code == 400
    assert "multipart" in response.json()["error"]


def _batch_histogram(server) -> tuple[float, float]:
    """BentoML's adaptive-batching histogram for `classify`: (calls received, model invocations)."""
    text = httpx.get(f"{server.url}/metrics").text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("bentoml_service_adaptive_batch_size_sum") and 'method_name="classify"' in line:
            total += float(line.rsplit(" ", 1)[1])
        if line.startswith("bentoml_service_adaptive_batch_size_count") and 'method_name="classify"' in line:
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def test_concurrent_requests_share_model_calls(server, sample_files):
    """Front micro-batching joins waiting requests into one call; BentoML may join calls again."""
    before_calls, before_runs = _batch_histogram(server)
    result = load(server.url, sample_files, requests=128, concurrency=32)
    assert result.error_count == 0, result.errors[:3]
    after_calls, after_runs = _batch_histogram(server)
    calls, runs = after_calls - before_calls, after_runs - before_runs
    assert 0 < runs <= calls < 128, f"{calls} calls and {runs} model runs for 128 images: no batching"


def test_thousand_requests_at_concurrency_64_without_errors(server, sample_files):
    """bentoml issue 5540 (self-client session rebuilt every 100 calls) must not bite."""
    result = load(server.url, sample_files, requests=1000, concurrency=64)
    assert result.error_count == 0, (result.statuses, result.errors[:5], server.output())
    assert result.statuses[200] == 1000
    assert re.search(r"Traceback", server.output()) is None
