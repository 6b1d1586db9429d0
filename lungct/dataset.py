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


class _UnionFind:
    """Disjoint sets over 0..n-1 with their sizes. union(i, j) puts j's set under i's root, and ids() numbers
    sets in order of their roots, so the same unions in the same order always give the same ids (and folds)."""

    def __init__(self, n: int):
        self.parent, self.size = list(range(n)), [1] * n

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[b] = a
            self.size[a] += self.size[b]

    def ids(self) -> np.ndarray:
        _, ids = np.unique([self.find(i) for i in range(len(self.parent))], return_inverse=True)
        return ids


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
    sets = _UnionFind(len(digests))
    first_by_digest: dict[str, int] = {}
    for i, digest in enumerate(digests):
        sets.union(first_by_digest.setdefault(digest, i), i)
    for i in range(len(digests)):
        for j in np.flatnonzero(view_distances(thumbnails, i)[i + 1 :] < max_mean_diff) + i + 1:
            sets.union(i, int(j))
    return sets.ids()


def scan_groups(groups: np.ndarray, thumbnails: np.ndarray, radius: float, cap: int) -> np.ndarray:
    """``groups`` (such as duplicate_groups) grown towards whole scans: pairs of slices closer than view
    distance ``radius`` join their groups, nearest pairs first, unless the joined group would hold more than
    ``cap`` slices (a larger one is left as it is). Neighbouring slices of one scan are 0.03-0.05 apart, so
    folds of these groups score slices mostly against other scans, as a held-back test of new scans does."""
    n = len(groups)
    sets = _UnionFind(n)
    first_of_group: dict[int, int] = {}
    for i, g in enumerate(groups):
        sets.union(first_of_group.setdefault(int(g), i), i)
    distance = np.stack([view_distances(thumbnails, i) for i in range(n)])
    first, second = np.nonzero(np.triu(distance < radius, k=1))
    for k in np.argsort(distance[first, second], kind="stable"):
        a, b = sets.find(int(first[k])), sets.find(int(second[k]))
        if a != b and sets.size[a] + sets.size[b] <= cap:
            sets.union(a, b)
    return sets.ids()


def grouped_folds(groups: np.ndarray, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Assign each group to one of k folds, balancing class counts greedily (largest groups first)."""
    rng = np.random.default_rng(seed)
    unique = rng.permutation(np.unique(groups))
    if len(unique) < k:
        raise DatasetError(f"{k} folds need at least {k} groups of slices; the data has {len(unique)} "
                           "(fewer folds, or a smaller scan radius or cap)")
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
