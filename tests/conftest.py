"""Shared fixtures: a temporary BentoML home, real images, the shipped model, a real `bentoml serve`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# BentoML reads BENTOML_HOME when it is first imported: point it at a temporary store first.
_HOME = tempfile.mkdtemp(prefix="lungct-bentoml-")
os.environ["BENTOML_HOME"] = _HOME
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from tests.server import Server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "samples"
KAGGLE = ROOT.parent / "shared" / "data" / "chest-ctscan-images" / "Data"


@pytest.fixture(scope="session")
def bentoml_home() -> Path:
    return Path(_HOME)


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """A folder of class folders: the committed samples."""
    return SAMPLES


@pytest.fixture(scope="session")
def sample_files() -> list[Path]:
    return sorted(SAMPLES.glob("*/*.png"))


@pytest.fixture(scope="session")
def eval_dir() -> Path:
    """Kaggle's valid split from ../shared when present, else the committed samples."""
    valid = KAGGLE / "valid"
    return valid if valid.is_dir() else SAMPLES


@pytest.fixture(scope="session")
def shipped_tag(bentoml_home) -> str:
    from lungct.store import import_shipped

    return import_shipped()


@pytest.fixture(scope="session")
def server(shipped_tag, bentoml_home):
    """One real `bentoml serve` for the whole session, serving the shipped model."""
    with Server(env={"LUNGCT_MODEL_TAG": shipped_tag}) as srv:
        yield srv


@pytest.fixture(scope="module")
def tiny_ensemble(samples_dir, tmp_path_factory) -> tuple[str, list[Path], list[str]]:
    """A real two-member ensemble trained on the samples (its store tag), one 2-fold CV run per member seed,
    and the training flags of its recipe."""
    import bentoml

    from training import train

    root = tmp_path_factory.mktemp("ensemble")
    recipe = ["--data", str(samples_dir), "--epochs", "1", "--width", "16", "--stages", "1", "--size", "32"]
    assert train.main([*recipe, "--ensemble", "2", "--runs", str(root / "final")]) == 0
    tag = str(bentoml.models.get("lungct:latest").tag)
    runs = []
    for seed in (1337, 1338):
        assert train.main([*recipe, "--cv", "2", "--cv-only", "--ensemble", "1", "--seed", str(seed),
                           "--runs", str(root / str(seed))]) == 0
        runs.append(next((root / str(seed)).iterdir()))
    return tag, runs, recipe
