"""Finding labelled files on disk and grouping exact and near duplicates."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungct.labels import CLASSES, normalise_label

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".tif", ".tiff", ".bmp", ".gif"}


class DatasetError(ValueError):
    """A data folder that cannot be used: missing, empty, or holding an unknown class."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int

    @property
    def class_name(self) -> str:
        return CLASSES[self.label]


def resolve_split(root: Path, split: str | None) -> Path:
    """A Kaggle root (``Data/`` or its parent) with a split name, or a folder of class folders."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    if split is None:
        return root
    for candidate in (root / split, root / "Data" / split):
        if candidate.is_dir():
            return candidate
    raise DatasetError(f"{root} has no split folder {split!r} (looked for {root / split} and {root / 'Data' / split})")


def list_samples(folder: Path) -> list[Sample]:
    """Every image under ``folder/<class folder>/``; an empty class folder or no images is an error."""
    folder = Path(folder)
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{folder} holds no class folders (expected one sub-folder per class)")
    samples: list[Sample] = []
    for class_dir in class_dirs:
        label = CLASSES.index(normalise_label(class_dir.name))
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"class folder {class_dir} holds no images")
        samples.extend(Sample(path, label) for path in files)
    return samples


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fingerprint(samples: list[Sample]) -> str:
    """One hash over the labelled contents of a training set, independent of file order."""
    lines = sorted(f"{file_digest(s.path)} {s.class_name}" for s in samples)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def view_distances(thumbnails: np.ndarray, i: int) -> np.ndarray:
    """How far every file is from file ``i``: over the views of ``thumbnails`` (N, views, h, w), the smallest
    mean absolute difference (0 for a copy; near duplicates are below 0.03)."""
    views = thumbnails.reshape(len(thumbnails), thumbnails.shape[1], -1).astype(np.float32, copy=False)
    return np.abs(views - views[i]).mean(axis=2).min(axis=1)


def duplicate_groups(digests: list[str], thumbnails: np.ndarray, max_mean_diff: float = 0.03) -> np.ndarray:
    """Group ids such that exact duplicates (same digest) and near duplicates share a group.

    ``thumbnails`` are small views of each file (N, views, h, w), such as its body-cropped and
    lung-cropped slice; two files are near duplicates when the mean absolute difference of any one view
    is below ``max_mean_diff``, so re-cropped, zoomed and re-saved copies of a slice land together.
    """
    n = len(digests)
    parent = list(range(n))
    first_by_digest: dict[str, int] = {}
    for i, digest in enumerate(digests):
        j = first_by_digest.setdefault(digest, i)
        parent[_find(parent, i)] = _find(parent, j)
    for i in range(n):
        close = np.flatnonzero(view_distances(thumbnails, i)[i + 1 :] < max_mean_diff) + i + 1
        for j in close:
            parent[_find(parent, int(j))] = _find(parent, i)
    roots = [_find(parent, i) for i in range(n)]
    _, ids = np.unique(roots, return_inverse=True)
    return ids


def grouped_folds(groups: np.ndarray, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Assign each group to one of k folds, balancing class counts greedily (largest groups first)."""
    rng = np.random.default_rng(seed)
    unique = rng.permutation(np.unique(groups))
    sizes = {g: np.bincount(labels[groups == g], minlength=len(CLASSES)) for g in unique}
    order = sorted(unique, key=lambda g: -sizes[g].sum())
    fold_counts = np.zeros((k, len(CLASSES)))
    fold_of_group: dict[int, int] = {}
    for g in order:
        cost = [(fold_counts[f] + sizes[g]).max() + fold_counts[f].sum() * 1e-3 for f in range(k)]
        f = int(np.argmin(cost))
        fold_of_group[g] = f
        fold_counts[f] += sizes[g]
    return np.array([fold_of_group[g] for g in groups])
