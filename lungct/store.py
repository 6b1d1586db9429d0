"""Saving to and loading from the BentoML model store, with the model's metadata beside the weights."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from lungct.config import ModelConfig, PreprocessConfig, TrainConfig
from lungct.labels import CLASSES

MODEL_NAME = "lungct"
WEIGHTS_FILE = "model.keras"
METADATA_FILE = "metadata.json"
CARD_FILE = "MODEL_CARD.md"
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "models"
IMPORT_COMMAND = "python -m lungct.import_model"


class ModelMissingError(RuntimeError):
    """The requested model is absent from the store or cannot be loaded."""


class ModelInfo(BaseModel):
    """Everything needed to serve a model correctly, stored as the BentoML model's metadata."""

    classes: list[str] = Field(default_factory=lambda: list(CLASSES))
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    temperature: float = Field(1.0, gt=0, description="softmax temperature from calibration")
    class_bias: list[float] = Field(default_factory=lambda: [0.0] * len(CLASSES),
                                    description="added per class to logits / temperature (calibration)")
    data_fingerprint: str = ""
    metrics: dict = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    training_seconds: float = 0.0

    @model_validator(mode="after")
    def _one_bias_per_class(self) -> "ModelInfo":
        if len(self.class_bias) != len(self.classes):
            raise ValueError(f"class_bias has {len(self.class_bias)} values for {len(self.classes)} classes")
        return self


def framework_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"keras": keras.__version__, "tensorflow": tf.__version__}


@contextmanager
def _create(tag: str, info: ModelInfo, labels: dict):
    """A new store model with its metadata (in the store's record and as metadata.json); the caller adds the weights."""
    import bentoml

    with bentoml.models.create(tag, metadata=info.model_dump(mode="json"), labels=labels) as bento_model:
        Path(bento_model.path_of(METADATA_FILE)).write_text(info.model_dump_json(indent=2))
        yield bento_model


def save_to_store(model, info: ModelInfo, version: str | None = None) -> str:
    """Save a Keras model and its metadata as ``lungct:<version>``; returns the tag."""
    tag = f"{MODEL_NAME}:{version}" if version else MODEL_NAME
    import keras

    inference_only = keras.models.clone_model(model)  # no optimizer state: a third of the size
    inference_only.set_weights(model.get_weights())
    with _create(tag, info, {"framework": "keras"}) as bento_model:
        inference_only.save(bento_model.path_of(WEIGHTS_FILE))
    return str(bento_model.tag)


def save_with_info(tag: str, info: ModelInfo) -> str:
    """Save a stored model again under a new version with other metadata; the weights file is copied unchanged."""
    import bentoml

    source = bentoml.models.get(tag)
    with _create(MODEL_NAME, info, source.info.labels) as bento_model:
        shutil.copyfile(source.path_of(WEIGHTS_FILE), bento_model.path_of(WEIGHTS_FILE))
    return str(bento_model.tag)


def _hint() -> str:
    return f"import the shipped model with `{IMPORT_COMMAND}` or train one with `python -m training.train`"


def check_model(tag: str = f"{MODEL_NAME}:latest") -> str:
    """Cheap start-up check (no TensorFlow): the model exists, its metadata is valid and its
    weights archive is intact. Returns the full tag or raises ModelMissingError."""
    import zipfile

    import bentoml

    try:
        bento_model = bentoml.models.get(tag)
    except Exception as exc:
        raise ModelMissingError(f"model {tag!r} is not in the BentoML model store: {_hint()}") from exc
    try:
        ModelInfo.model_validate(bento_model.info.metadata)
        with zipfile.ZipFile(bento_model.path_of(WEIGHTS_FILE)) as archive:
            broken = archive.testzip()
        if broken:
            raise ValueError(f"{broken} is corrupt")
    except Exception as exc:
        raise ModelMissingError(f"model {bento_model.tag} in the store is corrupt ({exc}): {_hint()}") from exc
    return str(bento_model.tag)


def read_info(tag: str = f"{MODEL_NAME}:latest") -> tuple[ModelInfo, str, str]:
    """(metadata, full tag, creation time) without loading the weights."""
    import bentoml

    bento_model = bentoml.models.get(check_model(tag))
    created = bento_model.info.creation_time.astimezone(timezone.utc).isoformat()
    return ModelInfo.model_validate(bento_model.info.metadata), str(bento_model.tag), created


def load_from_store(tag: str = f"{MODEL_NAME}:latest"):
    """Return (keras model, ModelInfo, full tag, creation time) or raise ModelMissingError."""
    import bentoml

    from lungct.model import load_model

    info, full_tag, created = read_info(tag)
    try:
        model = load_model(bentoml.models.get(full_tag).path_of(WEIGHTS_FILE))
    except Exception as exc:
        raise ModelMissingError(f"model {full_tag} in the store cannot be loaded ({exc}): {_hint()}") from exc
    return model, info, full_tag, created


def export_shipped(tag: str, folder: Path = SHIPPED_DIR) -> Path:
    """Copy a stored model's weights and metadata into ``models/`` for committing."""
    import bentoml

    bento_model = bentoml.models.get(tag)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bento_model.path_of(WEIGHTS_FILE), folder / WEIGHTS_FILE)
    metadata = json.loads(Path(bento_model.path_of(METADATA_FILE)).read_text())
    metadata["tag"] = str(bento_model.tag)
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return folder


def import_shipped(folder: Path = SHIPPED_DIR) -> str:
    """Put the model committed under ``models/`` into the local store unless it is already there,
    with its model card beside the weights (bentos and images built from the store carry it)."""
    import bentoml

    from lungct.model import load_model

    metadata = json.loads((folder / METADATA_FILE).read_text())
    tag = metadata.pop("tag")
    try:
        stored = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        model = load_model(folder / WEIGHTS_FILE)
        stored = bentoml.models.get(save_to_store(model, ModelInfo.model_validate(metadata), version=tag.split(":", 1)[1]))
    card = folder / CARD_FILE
    if card.is_file() and not Path(stored.path_of(CARD_FILE)).exists():  # also for models imported before cards travelled
        shutil.copyfile(card, stored.path_of(CARD_FILE))
    return str(stored.tag)


def stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
