"""`python -m training.fold_leak RUN [RUN ...] --data DATA`: how far a CV run's folds leak, and how far CV
accuracy is from accuracy on slices unlike any training slice.

A slice whose near-duplicate group (lungct.dataset.duplicate_groups, as training computes it now) spans
several of a run's folds had a copy in training when it was scored. For runs cross-validated before the
grouping changed, this prints the accuracy of the runs' averaged out-of-fold logits on those slices and
on the others, per class: how optimistic the old folds were.

Grouping keeps copies together, not neighbouring slices of one scan. So it also prints accuracy by how
far each slice was from the nearest slice of the folds it was scored against (the grouping's distance,
lungct.dataset.view_distances): the far bands are the nearest CV comes to slices of a new scan.

Last, per series and class: the Kaggle set's files are either numbered ("000108 (3).png", "12 - Copy.png")
or named otherwise ("ad12.png", "sq3.png", "l5.png"), two different sources; for each, the accuracy, how
many slices were called normal, and how bright the body is in the network's input (the 75th and 90th
percentile of its pixels), which tells how the source windowed its slices.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lungct.config import PreprocessConfig
from lungct.dataset import DatasetError, view_distances
from lungct.labels import CLASSES
from training.data import concat, series_of
from training.ensemble_cv import load_members, run_recipe, scores
from training.train import load_splits


def leaked(groups: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """True for each slice whose group has members in more than one fold."""
    folds_of = {g: set(folds[groups == g]) for g in np.unique(groups)}
    return np.array([len(folds_of[g]) > 1 for g in groups])


def _accuracy(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if hits.size else None


def _text(accuracy: float | None) -> str:
    return "-" if accuracy is None else f"{accuracy:.3f}"


def leak_report(groups: np.ndarray, folds: np.ndarray, labels: np.ndarray, predicted: np.ndarray) -> dict:
    leak, hits = leaked(groups, folds), predicted == labels
    rows = {"all": np.ones_like(leak)} | {name: labels == i for i, name in enumerate(CLASSES)}
    return {name: {"n": int(rows[name].sum()), "leaked": int((leak & rows[name]).sum()),
                   "accuracy_leaked": _accuracy(hits[leak & rows[name]]), "accuracy_rest": _accuracy(hits[~leak & rows[name]])}
            for name in rows}


def nearest_other_fold(thumbnails: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """For each slice, the distance to the nearest slice of another fold (the data it was scored against)."""
    return np.array([view_distances(thumbnails, i)[folds != folds[i]].min() for i in range(len(folds))])


def distance_report(distance: np.ndarray, labels: np.ndarray, predicted: np.ndarray, edges: list[float]) -> list[dict]:
    """Accuracy over all slices and over tumour slices, per band of distance [low, high)."""
    bounds = [0.0, *edges, np.inf]
    hits, tumour = predicted == labels, labels != CLASSES.index("normal")
    rows = []
    for low, high in zip(bounds[:-1], bounds[1:]):
        band = (distance >= low) & (distance < high)
        rows.append({"low": low, "high": None if high == np.inf else high, "n": int(band.sum()),
                     "accuracy": _accuracy(hits[band]), "n_tumour": int((band & tumour).sum()),
                     "accuracy_tumour": _accuracy(hits[band & tumour])})
    return rows


def series_report(series: np.ndarray, labels: np.ndarray, predicted: np.ndarray, images: np.ndarray,
                  body_above: float = 0.05) -> list[dict]:
    """Per series and class: slices, accuracy, slices called normal, body brightness (75th/90th percentile)."""
    rows = []
    for name in sorted(set(series)):
        for k, label in enumerate(CLASSES):
            pick = (series == name) & (labels == k)
            if not pick.any():
                continue
            chosen = images[pick]
            p75, p90 = np.quantile(chosen[chosen > body_above], [0.75, 0.9])
            rows.append({"series": name, "class": label, "n": int(pick.sum()),
                         "accuracy": float((predicted[pick] == k).mean()),
                         "called_normal": int((predicted[pick] == CLASSES.index("normal")).sum()),
                         "body_p75": float(p75), "body_p90": float(p90)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="CV run folders with oof.npz (averaged when several)")
    p.add_argument("--data", type=Path, required=True, help="the data the runs were cross-validated on")
    p.add_argument("--calibrate", action="store_true",
                   help="the calibrated predictions (`training.ensemble_cv --calibrate`) instead of the logits' argmax")
    p.add_argument("--edges", type=float, nargs="+", default=[0.03, 0.05, 0.07],
                   help="band edges of the distance to the nearest slice of another fold")
    args = p.parse_args(argv)
    logits, shared = load_members(args.runs)
    try:
        recipe = run_recipe(args.runs[0])
        train, valid = load_splits(args.data, PreprocessConfig(**recipe["preprocess"]), recipe["train"]["fold_seed"])
    except (DatasetError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    data = concat(train, valid)
    if data.digests != list(shared["digests"]):
        raise SystemExit(f"error: {args.data} is not the data the runs were cross-validated on")
    predicted = scores(np.mean(logits, axis=0), shared, args.calibrate).argmax(1)
    report = leak_report(data.groups(), shared["folds"], shared["labels"], predicted)
    for name, row in report.items():
        print(f"{name:<26} n {row['n']:>4}  with a copy in another fold {row['leaked']:>4}  "
              f"accuracy on those {_text(row['accuracy_leaked'])}  on the rest {_text(row['accuracy_rest'])}")
    distance = nearest_other_fold(data.thumbnails, shared["folds"])
    bands = distance_report(distance, shared["labels"], predicted, sorted(args.edges))
    print("distance to the nearest slice of the other folds:")
    for row in bands:
        high = "inf" if row["high"] is None else f"{row['high']:.3f}"
        print(f"  [{row['low']:.3f}, {high:<5}) n {row['n']:>4} accuracy {_text(row['accuracy'])}  "
              f"tumour slices n {row['n_tumour']:>4} accuracy {_text(row['accuracy_tumour'])}")
    series = series_report(series_of([s.path.name for s in data.samples]), shared["labels"], predicted, data.images)
    print("per series (numbered files / other names) and class:")
    for row in series:
        print(f"  {row['series']:<9} {row['class']:<24} n {row['n']:>4} accuracy {row['accuracy']:.3f}  called normal "
              f"{row['called_normal']:>4}  body brightness p75 {row['body_p75']:.2f} p90 {row['body_p90']:.2f}")
    print(json.dumps({"groups": report, "distance": bands, "series": series}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
