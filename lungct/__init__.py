"""LungCT: a residual CNN that classifies chest CT slices, shared by training and serving."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lungct.labels import CLASSES, UnknownLabelError, normalise_label

__all__ = ["CLASSES", "UnknownLabelError", "normalise_label"]
