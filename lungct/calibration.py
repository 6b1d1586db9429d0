"""Temperature scaling with an optional bias per class, and expected calibration error."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lungct.predictor import softmax


MIN_TEMPERATURE, MAX_TEMPERATURE, MAX_BIAS = 0.05, 20.0, 10.0


class Calibration(NamedTuple):
    """Served probabilities are softmax(logits / temperature + class_bias)."""

    temperature: float
    class_bias: list[float]


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float, class_bias=0.0) -> float:
    probs = softmax(logits, temperature, class_bias)
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())


def fit_calibration(logits: np.ndarray, labels: np.ndarray, class_bias: bool = True, steps: int = 50) -> Calibration:
    """The temperature, and with `class_bias` a bias per class (the first class's fixed at 0), that minimise
    negative log-likelihood: Newton's method with step halving on (1 / temperature, bias), where the
    loss is convex, within bounds (temperature 0.05-20, |bias| at most 10) that keep a fit on separable
    or uninformative logits finite. Without `class_bias` this is temperature scaling."""
    logits = np.asarray(logits, dtype=np.float64)
    n, k = logits.shape
    onehot = np.eye(k)[labels]
    # d(scaled logits)/d(params) per slice: column 0 the logits (for 1/T), then one column per free bias
    design = np.concatenate([logits[:, :, None], np.broadcast_to(np.eye(k)[:, 1:], (n, k, k - 1))], axis=2)
    if not class_bias:
        design = design[:, :, :1]
    params = np.zeros(design.shape[2])
    params[0] = 1.0
    low, high = np.full(len(params), -MAX_BIAS), np.full(len(params), MAX_BIAS)
    low[0], high[0] = 1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE

    def bounded(theta: np.ndarray) -> np.ndarray:  # separable or uninformative logits: stay finite and positive
        return np.clip(theta, low, high)

    def loss(theta: np.ndarray) -> float:
        z = design @ theta
        z -= z.max(axis=1, keepdims=True)
        return float((np.log(np.exp(z).sum(axis=1)) - (z * onehot).sum(axis=1)).mean())

    for _ in range(steps):
        z = design @ params
        probs = np.exp(z - z.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        grad = np.einsum("nk,nkp->p", probs - onehot, design) / n
        curvature = np.einsum("nk,nkp->nkp", probs, design) - probs[:, :, None] * np.einsum("nk,nkp->np", probs, design)[:, None, :]
        hessian = np.einsum("nkp,nkq->pq", design, curvature) / n + 1e-9 * np.eye(len(params))
        step, before = np.linalg.solve(hessian, grad), loss(params)
        while loss(bounded(params - step)) > before and np.abs(step).max() > 1e-12:
            step /= 2
        moved = bounded(params - step)
        params, change = moved, np.abs(moved - params).max()
        if change < 1e-10:
            break
    bias = np.zeros(k)
    bias[1:] = params[1:] if class_bias else 0.0
    return Calibration(float(1.0 / params[0]), [float(b) for b in bias])


def cross_fitted(logits: np.ndarray, labels: np.ndarray, folds: np.ndarray, class_bias: bool = True) -> np.ndarray:
    """Probabilities of each fold with the calibration fitted on the other folds' logits."""
    if len(np.unique(folds)) < 2:
        raise ValueError("calibration out of fold needs at least two folds: each is calibrated on the others")
    probs = np.zeros(logits.shape, dtype=np.float32)
    for fold in np.unique(folds):
        held = folds == fold
        probs[held] = softmax(logits[held], *fit_calibration(logits[~held], labels[~held], class_bias))
    return probs


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


def valid_calibration(logits: np.ndarray, labels: np.ndarray, calibration: Calibration) -> dict:
    """ECE and negative log-likelihood of logits before and after a calibration."""
    return {"ece_valid_before": expected_calibration_error(softmax(logits), labels),
            "ece_valid_after": expected_calibration_error(softmax(logits, *calibration), labels),
            "nll_valid_before": nll(logits, labels, 1.0), "nll_valid_after": nll(logits, labels, *calibration)}
