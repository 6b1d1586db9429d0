"""Training curves and confusion-matrix figures for a run folder."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lungct.labels import CLASSES  # noqa: E402


def plot_history(histories: list[dict[str, list[float]]], path: Path) -> None:
    """Loss and accuracy per epoch, train and valid, one pair of lines per ensemble member."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for index, history in enumerate(histories):
            member = f" (member {index})" if len(histories) > 1 else ""
            ax.plot(history.get(key, []), label=f"train {key}{member}")
            ax.plot(history.get(f"val_{key}", []), label=f"valid {key}{member}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: list[list[int]], path: Path, title: str = "confusion matrix (valid)") -> None:
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(matrix, cmap="Blues")
    short = [c.split(".")[0] if "." in c else c for c in CLASSES]
    ax.set_xticks(range(len(CLASSES)), short, rotation=30)
    ax.set_yticks(range(len(CLASSES)), short)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(before: np.ndarray, after: np.ndarray, labels: np.ndarray, path: Path, bins: int = 10,
                     title: str = "reliability (valid)") -> None:
    """Reliability diagram: accuracy against confidence, before and after calibration."""
    fig, ax = plt.subplots(figsize=(5, 5))
    edges = np.linspace(0, 1, bins + 1)
    for probs, name in ((before, "before"), (after, "after calibration")):
        confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
        which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
        points = [(confidence[which == b].mean(), correct[which == b].mean()) for b in range(bins) if (which == b).any()]
        ax.plot(*zip(*points), marker="o", label=name)
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
