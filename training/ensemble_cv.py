"""`python -m training.ensemble_cv RUN [RUN ...]`: score an ensemble from cross-validation runs' out-of-fold logits.

Each RUN is a run folder of `training.train --cv K` (its oof.npz); the runs must share folds and data.
Members' logits are averaged, as `--ensemble N` models do when served (lungct.model.average_ensemble). Prints per-run and
ensemble accuracy and macro-F1 (mean ± std over folds), then the ensemble's accuracy per fold and recall per fold and class,
and its accuracy pooled over the folds.
`--mirror` scores test-time augmentation: each slice's logits averaged with its horizontal mirror's.
`--finished-folds` scores stopped runs on the folds every run has finished (folds are trained in order, so
these are folds 1..m); without it unfinished runs are refused.
`--calibrate` scores calibrated predictions, as `training.calibrate` fits them for a model: each fold's logits with
the temperature and class bias fitted on the other folds' (so the figures stay out of fold).
`--subsets K` scores every ensemble of K of the runs instead (in `itertools.combinations` order, so two arms given
in the same seed order print paired lines) and their mean, lowest and highest accuracy and macro-F1: how much a
K-member ensemble of a recipe depends on which seeds it drew.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from lungct.calibration import cross_fitted
from lungct.config import ModelConfig, PreprocessConfig, TrainConfig
from lungct.labels import CLASSES
from lungct.metrics import cv_summary
from lungct.store import ModelInfo


def load_oof(run: Path, finished_folds: bool = False) -> dict[str, np.ndarray]:
    path = run / "oof.npz"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found: run `python -m training.train --cv K` first")
    with np.load(path) as data:
        oof = {key: data[key] for key in data.files}
    if not finished_folds and "done" in oof and not oof["done"].all():
        raise SystemExit(f"error: {run} has unfinished folds: finish it with `python -m training.train ... --resume {run}`"
                         " or score the finished ones with --finished-folds")
    return oof


def run_recipe(run: Path) -> dict:
    """The recipe a CV run folder recorded in metrics.json."""
    path = run / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found")
    return json.loads(path.read_text())["cv"]["recipe"]


def _recipe_key(preprocess: dict, model: dict, train: dict) -> tuple:
    """A recipe up to member count, seed, early-stopping patience (CV folds always train all epochs, so a
    run's patience never applied) and the folds' scan grouping (which chooses folds, not the model); fields a
    run predates take their defaults."""
    return (PreprocessConfig(**preprocess), ModelConfig(**model).model_copy(update={"ensemble": 1}),
            TrainConfig(**train).model_copy(update={"seed": 0, "patience": 0, "scan_radius": 0.0, "scan_cap": 1}))


def check_members(info: ModelInfo, runs: list[Path]) -> None:
    """Exit with an error unless the runs are one CV run per member of the model: its recipe, its seeds."""
    recipes = [run_recipe(run) for run in runs]
    seeds = sorted(recipe["train"]["seed"] for recipe in recipes)
    expected = list(range(info.train.seed, info.train.seed + info.model.ensemble))
    if seeds != expected:
        raise SystemExit(f"error: the CV runs have seeds {seeds}; the model's members have {expected}")
    mine = _recipe_key(info.preprocess.model_dump(), info.model.model_dump(), info.train.model_dump())
    for run, recipe in zip(runs, recipes):
        if _recipe_key(**recipe) != mine:
            raise SystemExit(f"error: {run} cross-validated another recipe than the model's")


def member_logits(member: dict[str, np.ndarray], run: Path, mirror: bool) -> np.ndarray:
    """A run's out-of-fold logits; with mirror, averaged with those of the horizontally mirrored slices."""
    if not mirror:
        return member["logits"]
    if "mirrored_logits" not in member:
        raise SystemExit(f"error: {run} has no mirrored logits: it predates them; run its CV again")
    return (member["logits"] + member["mirrored_logits"]) / 2


def finished_rows(members: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Which slices lie in a fold every run has finished (runs that predate `done` finished all folds)."""
    folds = members[0]["folds"]
    done = np.logical_and.reduce([member.get("done", np.ones(folds.max() + 1, bool)) for member in members])
    return done[folds]


def load_members(runs: list[Path], mirror: bool = False,
                 finished_folds: bool = False) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Each run's out-of-fold logits, and the labels, folds and digests they share (checked); with
    finished_folds, only the slices of folds that every run has finished."""
    members = [load_oof(run, finished_folds) for run in runs]
    first = members[0]
    for run, member in zip(runs, members):
        if not (np.array_equal(member["folds"], first["folds"]) and np.array_equal(member["digests"], first["digests"])):
            raise SystemExit(f"error: {run} was cross-validated on other folds or data than {runs[0]}")
    rows = finished_rows(members)
    if not rows.any():
        raise SystemExit("error: no fold is finished by every run")
    shared = {key: first[key][rows] for key in ("labels", "folds", "digests")}
    return [member_logits(member, run, mirror)[rows] for run, member in zip(runs, members)], shared


def scores(logits: np.ndarray, shared: dict[str, np.ndarray], calibrate: bool = False) -> np.ndarray:
    """Out-of-fold logits, or with calibrate each fold's probabilities calibrated on the other folds."""
    return cross_fitted(logits, shared["labels"], shared["folds"]) if calibrate else logits


def ensemble_report(runs: list[Path], mirror: bool = False, finished_folds: bool = False, calibrate: bool = False) -> dict:
    logits, shared = load_members(runs, mirror, finished_folds)
    labels, folds = shared["labels"], shared["folds"]
    report = {str(run): cv_summary(scores(l, shared, calibrate), labels, folds) for run, l in zip(runs, logits)}
    report["ensemble"] = cv_summary(scores(np.mean(logits, axis=0), shared, calibrate), labels, folds)
    return report


def subsets_report(runs: list[Path], size: int, mirror: bool = False, finished_folds: bool = False,
                   calibrate: bool = False) -> dict:
    """Every ensemble of `size` of the runs: its members and CV summary, then the mean, lowest and highest
    accuracy and macro-F1 (fold means) over those ensembles."""
    if not 1 <= size <= len(runs):
        raise SystemExit(f"error: --subsets {size} needs between 1 and {len(runs)} (the number of runs given)")
    logits, shared = load_members(runs, mirror, finished_folds)
    subsets = [{"runs": [str(runs[i]) for i in chosen],
                **cv_summary(scores(np.mean([logits[i] for i in chosen], axis=0), shared, calibrate), shared["labels"],
                             shared["folds"])}
               for chosen in itertools.combinations(range(len(runs)), size)]
    spread = {f"{metric}_{stat}": float(fn([s[f"{metric}_mean"] for s in subsets]))
              for metric in ("accuracy", "macro_f1") for stat, fn in (("mean", np.mean), ("min", np.min), ("max", np.max))}
    return {"size": size, "subsets": subsets, **spread}


def print_subsets(report: dict) -> None:
    for subset in report["subsets"]:
        print(" + ".join(subset["runs"]) + f": accuracy {subset['accuracy_mean']:.4f} ± {subset['accuracy_std']:.4f}, "
              f"macro-F1 {subset['macro_f1_mean']:.4f} ± {subset['macro_f1_std']:.4f}")
    print(f"{report['size']}-member ensembles ({len(report['subsets'])}): accuracy {report['accuracy_mean']:.4f} on average "
          f"({report['accuracy_min']:.4f}-{report['accuracy_max']:.4f}), macro-F1 {report['macro_f1_mean']:.4f} "
          f"({report['macro_f1_min']:.4f}-{report['macro_f1_max']:.4f})")
    print(json.dumps(report))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", type=Path, nargs="+", help="run folders with oof.npz")
    p.add_argument("--mirror", action="store_true",
                   help="test-time augmentation: average each slice's logits with its horizontal mirror's")
    p.add_argument("--finished-folds", action="store_true",
                   help="score stopped runs on the folds every run has finished")
    p.add_argument("--calibrate", action="store_true",
                   help="score calibrated predictions (temperature and class bias fitted on the other folds)")
    p.add_argument("--subsets", type=int, metavar="K",
                   help="score every ensemble of K of the runs and the spread of their scores")
    args = p.parse_args(argv)
    try:
        if args.subsets is not None:
            print_subsets(subsets_report(args.runs, args.subsets, args.mirror, args.finished_folds, args.calibrate))
            return 0
        report = ensemble_report(args.runs, args.mirror, args.finished_folds, args.calibrate)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    for name, score in report.items():
        print(f"{name}: accuracy {score['accuracy_mean']:.4f} ± {score['accuracy_std']:.4f}, "
              f"macro-F1 {score['macro_f1_mean']:.4f} ± {score['macro_f1_std']:.4f}")
    print("ensemble accuracy and recall per fold (" + ", ".join(CLASSES) + "):")
    for index, fold in enumerate(report["ensemble"]["folds"], 1):
        print(f"  fold {index}: n {fold['n']}  accuracy {fold['accuracy']:.3f}  recall "
              + "  ".join(f"{r:.3f}" for r in fold["recall"].values()))
    folds = report["ensemble"]["folds"]
    print(f"ensemble accuracy pooled over {len(folds)} folds: "
          f"{sum(f['n'] * f['accuracy'] for f in folds) / sum(f['n'] for f in folds):.4f}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
