"""Typed configuration with defaults for preprocessing, the model, training and serving."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PreprocessConfig(_Frozen):
    """How a decoded slice becomes the model's input; stored in the model's metadata."""

    size: int = Field(96, ge=16, le=1024, description="side of the square input in pixels")
    crop_foreground: bool = Field(True, description="crop before resizing (to what: crop_to)")
    crop_to: Literal["body", "lungs"] = Field(
        "body", description="crop to the body, or to the lungs' box (the air the body encloses) widened by lung_margin")
    lung_margin: float = Field(0.1, ge=0, le=1, description="margin around the lungs' box, as a share of its longer side")
    keep_aspect: bool = Field(True, description="resize the crop keeping its aspect ratio, padded with black; off: "
                              "stretch it to the square, so proportions and padding stop telling one export from another")
    foreground_threshold: float = Field(0.1, gt=0, lt=1, description="intensity that counts as body")
    low_percentile: float = Field(0.5, ge=0, lt=50)
    high_percentile: float = Field(99.5, gt=50, le=100)
    intensity: Literal["percentile", "equalize"] = Field(
        "percentile", description="contrast stretch between the percentiles, or histogram equalisation over the body")


class DecodeConfig(_Frozen):
    """Limits applied while decoding untrusted uploads."""

    max_pixels: int = Field(40_000_000, gt=0, description="decompression-bomb limit (width x height)")
    dicom_window_center: float = -600.0
    dicom_window_width: float = 1500.0


class ModelConfig(_Frozen):
    """Shape of the residual CNN."""

    width: int = Field(32, ge=4, description="filters of the first stage; doubled every stage")
    stages: int = Field(4, ge=1, le=6)
    blocks_per_stage: int = Field(1, ge=1, le=8)
    dropout: float = Field(0.2, ge=0, lt=1)
    stochastic_depth: float = Field(0.0, ge=0, lt=1, description="drop rate of the last residual branch (0: off)")
    ensemble: int = Field(3, ge=1, le=8, description="members trained with consecutive seeds; their logits are averaged")


class TrainConfig(_Frozen):
    """Optimisation recipe."""

    epochs: int = Field(200, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0, description="decoupled (AdamW) weight decay")
    warmup_epochs: int = Field(3, ge=0)
    label_smoothing: float = Field(0.05, ge=0, lt=1)
    patience: int = Field(0, ge=0, description="early stopping on valid accuracy with this patience, counted from "
                          "half-way (0: off; all epochs are trained, as in cross-validation)")
    seed: int = 1337
    fold_seed: int = Field(1337, description="seed of data splits (grouped CV folds, hold-out), apart from the training seed")
    scan_radius: float = Field(0.0, ge=0, lt=1, description="CV folds: beyond duplicates, also keep slices closer "
                               "than this view distance together, nearest first, as slices of one scan (0: off; a "
                               "scan's neighbouring slices are 0.03-0.05 apart)")
    scan_cap: int = Field(25, ge=1, description="CV folds: most slices a group joined by scan_radius may hold")
    augment: bool = True
    augment_strength: float = Field(1.0, gt=0, description="scales rotation, zoom, shift and contrast ranges")
    blur: float = Field(0.0, ge=0, le=4, description="largest Gaussian blur sigma in input pixels, drawn per slice (0: off)")
    gamma: float = Field(0.0, ge=0, le=1, description="gamma curve x ** exp(U(-g, g)) per slice (0: off)")
    saturate: float = Field(0.0, ge=0, lt=1, description="per slice, intensities above a white level ~ U(1 - s, 1) "
                            "saturate, as a narrower (lung) window shows soft tissue white (0: off)")
    mixup: float = Field(0.0, ge=0, description="mixup Beta(a, a) concentration; 0 turns mixup off")
    cutmix: float = Field(0.0, ge=0, description="cutmix Beta(a, a) concentration; 0 turns cutmix off")
    density_radius: float = Field(0.0, ge=0, description="weigh each training slice by 1 / (training slices within "
                                  "this view distance), per class (0: off; copies and a scan's neighbouring slices "
                                  "are 0.03-0.05 apart)")
    series_balance: float = Field(0.0, ge=0, le=1, description="divide each training slice's weight by (slices of its "
                                  "class and file series, numbered or otherwise named) ** this (0: off; 1: each "
                                  "series of a class weighs the same)")
    ema: float = Field(0.0, ge=0, lt=1, description="momentum of an exponential moving average of the weights per step "
                       "(0: off); the average is the trained model, so early stopping is not used")
    swa_epochs: int = Field(0, ge=0, description="stochastic weight averaging: the last N epochs train at the constant "
                            "learning rate swa_lr and the model is the mean of their end-of-epoch weights, batch-norm "
                            "statistics re-estimated (0: off; no early stopping)")
    swa_lr: float = Field(5e-4, gt=0, description="learning rate of the averaged epochs, which the cosine decays to")

    @model_validator(mode="after")
    def _one_weight_average(self) -> "TrainConfig":
        if self.swa_epochs and self.ema:
            raise ValueError("choose one weight average: ema or swa_epochs")
        if self.swa_epochs and self.swa_epochs > self.epochs - self.warmup_epochs - 1:
            raise ValueError(f"swa_epochs ({self.swa_epochs}) must leave at least one epoch of cosine decay after "
                             f"the {self.warmup_epochs} warm-up epochs of {self.epochs}")
        return self

    @property
    def averages_weights(self) -> bool:
        """Whether the trained model is an average of weights (EMA or SWA), whose batch-norm statistics need re-estimating."""
        return bool(self.ema or self.swa_epochs)

    @property
    def stops_early(self) -> bool:
        """Whether members stop on valid accuracy (and so valid chooses their epoch): a patience, and no weight average."""
        return bool(self.patience) and not self.averages_weights


def _env(name: str, default: str) -> str:
    return os.environ.get(f"LUNGCT_{name}", default)


class ServeConfig(_Frozen):
    """Service settings; every field can be set with a LUNGCT_<FIELD> environment variable."""

    model_tag: str = "lungct:latest"
    max_batch_size: int = Field(32, gt=1)
    max_latency_ms: int = Field(20_000, gt=0, description="longest a request may queue for the model (503 beyond)")
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0)
    max_files_per_batch: int = Field(64, gt=0)
    request_timeout_s: int = Field(60, gt=0, description="per-request time limit (BentoML traffic timeout)")
    drain_seconds: float = Field(5.0, ge=0, description="the model process keeps serving this long after SIGTERM")
    front_workers: int = Field(2, ge=1, description="front processes (decode, preprocess); the model process is one")
    batch_wait_ms: float = Field(5.0, ge=0, description="front-side batching window while other requests are decoding")
    readiness_timeout_s: float = Field(2.0, gt=0, description="/readyz waits this long for the model process's own /readyz")
    model_call_resends: int = Field(2, ge=0, description="a model call whose connection closes under it is sent again "
                                    "this many times while the model process answers its /readyz (0: 503 at once)")
    model_keepalive_s: float = Field(4.0, gt=0, lt=5, description="a front pools its connections to the model "
                                     "process this long (the model process closes idle ones after 5 s)")
    malloc_trim_s: float = Field(1.0, ge=0, description="give freed heap memory back every so often (0: never)")

    @classmethod
    def from_env(cls) -> "ServeConfig":
        fields = {name: _env(name.upper(), "") for name in cls.model_fields}
        return cls(**{k: v for k, v in fields.items() if v})
