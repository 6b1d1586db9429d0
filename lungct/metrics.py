"""Classification metrics computed with numpy (no extra dependency)."""

from __future__ import annotations

import numpy as np

from lungct.labels import CLASSES


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = len(CLASSES)) -> np.ndarray:
    matrix = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def classification_report(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """accuracy, macro_f1, per_class (precision, recall, f1, support), confusion_matrix, n."""
    matrix = confusion_matrix(y_true, y_pred)
    tp = np.diag(matrix).astype(float)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    return {
        "accuracy": float(tp.sum() / max(matrix.sum(), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(CLASSES)
        },
        "confusion_matrix": matrix.tolist(),
        "n": int(matrix.sum()),
    }


def cv_summary(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> dict:
    """Cross-validation summary from out-of-fold scores (logits or probabilities): k, mean and
    standard deviation over folds of accuracy and macro-F1, and each fold's figures with its per-class recall."""
    reports = [classification_report(labels[folds == f], scores[folds == f].argmax(1)) for f in np.unique(folds)]
    acc = np.array([r["accuracy"] for r in reports])
    f1 = np.array([r["macro_f1"] for r in reports])
    return {"k": len(reports), "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std()),
            "macro_f1_mean": float(f1.mean()), "macro_f1_std": float(f1.std()),
            "folds": [{"n": r["n"], "accuracy": r["accuracy"], "macro_f1": r["macro_f1"],
                       "recall": {name: row["recall"] for name, row in r["per_class"].items()}} for r in reports]}


def format_report(report: dict) -> str:
    lines = [f"{'class':<26}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, row in report["per_class"].items():
        lines.append(f"{name:<26}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['f1']:>10.3f}{row['support']:>10d}")
    lines.append(f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  n {report['n']}")
    lines.append("confusion matrix (rows: true, columns: predicted; order " + ", ".join(CLASSES) + ")")
    lines.extend("  " + " ".join(f"{v:>4d}" for v in row) for row in report["confusion_matrix"])
    return "\n".join(lines)
