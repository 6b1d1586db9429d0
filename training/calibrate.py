"""`python -m training.calibrate --model TAG --cv-runs RUN [RUN ...] --data DIR`: refit a model's temperature out of fold.

`training.train` fits the temperature on valid: 72 slices that share scans with train (and, with early
stopping, chose the members' stopping epochs). This fits it instead on the ensemble's out-of-fold logits
over train+valid (one `training.train --cv K --cv-only --seed S` run per member, as for the model card):
every slice predicted by networks of the model's recipe that never saw it. Reports expected calibration error before
and after, out of fold (each fold with the temperature fitted on the other folds) and on DIR with
the model itself, draws both reliability diagrams into `--out`, and saves the model again as a new
version with the temperature and these figures (metadata `metrics.calibration`); weights unchanged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lungct.calibration import expected_calibration_error, fit_temperature, valid_calibration
from lungct.dataset import DatasetError
from lungct.predictor import Predictor, softmax
from lungct.store import SHIPPED_DIR, ModelMissingError, save_with_info
from training.ensemble_cv import check_members, load_members
from training.evaluate import file_logits


def cross_fitted(logits: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Probabilities of each fold with the temperature fitted on the other folds' logits."""
    probs = np.zeros(logits.shape, dtype=np.float32)
    for fold in np.unique(folds):
        held = folds == fold
        probs[held] = softmax(logits[held], fit_temperature(logits[~held], labels[~held]))
    return probs


def calibration_report(oof: np.ndarray, labels: np.ndarray, folds: np.ndarray,
                       valid_logits: np.ndarray, valid_labels: np.ndarray) -> tuple[dict, dict]:
    """The out-of-fold temperature with ECE before/after (out of fold, cross-fitted; on valid with the
    model) and NLL on valid, and the probabilities to draw."""
    temperature = fit_temperature(oof, labels)
    probs = {"oof_before": softmax(oof), "oof_after": cross_fitted(oof, labels, folds),
             "valid_before": softmax(valid_logits), "valid_after": softmax(valid_logits, temperature)}
    report = {
        "fitted_on": "out-of-fold", "temperature": temperature, "n_fit": len(labels), "n_valid": len(valid_labels),
        "ece_oof_before": expected_calibration_error(probs["oof_before"], labels),
        "ece_oof_after": expected_calibration_error(probs["oof_after"], labels),
        **valid_calibration(valid_logits, valid_labels, temperature),
    }
    return report, probs


def main(argv: list[str] | None = None) -> int:
    from training.plots import plot_reliability

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lungct:latest")
    p.add_argument("--cv-runs", type=Path, nargs="+", required=True, help="CV run folders of the model's members")
    p.add_argument("--data", type=Path, required=True, help="class folders to report on with the model (valid)")
    p.add_argument("--out", type=Path, default=SHIPPED_DIR, help="folder for reliability_oof.png and reliability_valid.png")
    args = p.parse_args(argv)
    try:
        predictor = Predictor.from_store(args.model)
        check_members(predictor.info, args.cv_runs)  # before predicting: wrong runs fail at once
        members, shared = load_members(args.cv_runs)
        valid_labels, valid_logits, _ = file_logits(predictor, args.data)
    except (DatasetError, ModelMissingError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    report, probs = calibration_report(np.mean(members, axis=0), shared["labels"], shared["folds"],
                                       valid_logits, valid_labels)
    report.update(source_model=predictor.tag, valid_data=str(args.data), cv_runs=[str(run) for run in args.cv_runs])
    args.out.mkdir(parents=True, exist_ok=True)
    plot_reliability(probs["oof_before"], probs["oof_after"], shared["labels"], args.out / "reliability_oof.png",
                     title="reliability (out of fold, cross-fitted)")
    plot_reliability(probs["valid_before"], probs["valid_after"], valid_labels, args.out / "reliability_valid.png",
                     title=f"reliability ({args.data.name}, T fitted out of fold)")
    info = predictor.info.model_copy(update={"temperature": report["temperature"],
                                             "metrics": {**predictor.info.metrics, "calibration": report}})
    tag = save_with_info(predictor.tag, info)
    print(f"temperature {report['temperature']:.3f} (was {predictor.info.temperature:.3f}) from {report['n_fit']} "
          f"out-of-fold slices; ECE out of fold {report['ece_oof_before']:.3f} -> {report['ece_oof_after']:.3f} "
          f"(cross-fitted), on {args.data} {report['ece_valid_before']:.3f} -> {report['ece_valid_after']:.3f}; "
          f"saved as {tag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
