"""Temperature scaling and expected calibration error."""

from __future__ import annotations

import numpy as np

from lungct.predictor import softmax


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    probs = softmax(logits, temperature)
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [0.05, 20] (log grid, then refined) that minimises negative log-likelihood."""
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 200))
    best = min(grid, key=lambda t: nll(logits, labels, t))
    fine = np.linspace(best * 0.95, best * 1.05, 41)
    return float(min(fine, key=lambda t: nll(logits, labels, t)))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def valid_calibration(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """ECE and negative log-likelihood of logits before and after a temperature."""
    return {"ece_valid_before": expected_calibration_error(softmax(logits), labels),
            "ece_valid_after": expected_calibration_error(softmax(logits, temperature), labels),
            "nll_valid_before": nll(logits, labels, 1.0), "nll_valid_after": nll(logits, labels, temperature)}
