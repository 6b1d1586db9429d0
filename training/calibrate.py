"""`python -m training.calibrate --model TAG --cv-runs RUN [RUN ...] --data DIR`: refit a model's calibration out of fold.

Served probabilities are softmax(logits / T + b): a temperature T and a bias b per class (the first
class's fixed at 0), fitted together by negative log-likelihood. `training.train` fits T alone on valid:
72 slices that share scans with train. This fits T and b instead on the ensemble's out-of-fold logits
over train+valid (one `training.train --cv K --cv-only --seed S` run per member, as for the model card;
runs with `--scan-radius` give folds by scan, the nearest estimate of new scans): every slice predicted
by networks of the model's recipe that never saw it. The bias corrects which class a model favours on
slices unlike its training slices. Reports, out of fold with each fold calibrated by a fit on the other
folds, expected calibration error and accuracy / macro-F1 before and after; ECE on DIR with the model
itself; draws both reliability diagrams into `--out`; and saves the model again as a new version with
the calibration and these figures (metadata `metrics.calibration`, and `metrics.valid` for the calibrated
model's answers on DIR); weights unchanged.
`--temperature-only` fits T alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lungct.calibration import cross_fitted, expected_calibration_error, fit_calibration, valid_calibration
from lungct.dataset import DatasetError
from lungct.metrics import classification_report, cv_summary
from lungct.predictor import Predictor, softmax
from lungct.store import SHIPPED_DIR, ModelMissingError, save_with_info
from training.ensemble_cv import check_members, load_members
from training.evaluate import file_logits


def calibration_report(oof: np.ndarray, labels: np.ndarray, folds: np.ndarray, valid_logits: np.ndarray,
                       valid_labels: np.ndarray, class_bias: bool = True) -> tuple[dict, dict]:
    """The out-of-fold calibration with ECE, accuracy and macro-F1 before/after (out of fold, cross-fitted),
    ECE and NLL on valid with the model, and the probabilities to draw."""
    calibration = fit_calibration(oof, labels, class_bias)
    probs = {"oof_before": softmax(oof), "oof_after": cross_fitted(oof, labels, folds, class_bias),
             "valid_before": softmax(valid_logits), "valid_after": softmax(valid_logits, *calibration)}
    before, after = cv_summary(probs["oof_before"], labels, folds), cv_summary(probs["oof_after"], labels, folds)
    report = {
        "fitted_on": "out-of-fold", "temperature": calibration.temperature, "class_bias": calibration.class_bias,
        "n_fit": len(labels), "n_valid": len(valid_labels),
        "ece_oof_before": expected_calibration_error(probs["oof_before"], labels),
        "ece_oof_after": expected_calibration_error(probs["oof_after"], labels),
        **{f"{metric}_oof_{when}": summary[f"{metric}_mean"] for when, summary in (("before", before), ("after", after))
           for metric in ("accuracy", "macro_f1")},
        **valid_calibration(valid_logits, valid_labels, calibration),
    }
    return report, probs


def main(argv: list[str] | None = None) -> int:
    from training.plots import plot_reliability

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lungct:latest")
    p.add_argument("--cv-runs", type=Path, nargs="+", required=True, help="CV run folders of the model's members")
    p.add_argument("--data", type=Path, required=True, help="class folders to report on with the model (valid)")
    p.add_argument("--out", type=Path, default=SHIPPED_DIR, help="folder for reliability_oof.png and reliability_valid.png")
    p.add_argument("--temperature-only", action="store_true", help="fit the temperature alone (no class bias)")
    args = p.parse_args(argv)
    try:
        predictor = Predictor.from_store(args.model)
        check_members(predictor.info, args.cv_runs)  # before predicting: wrong runs fail at once
        members, shared = load_members(args.cv_runs)
        valid_labels, valid_logits, _ = file_logits(predictor, args.data)
    except (DatasetError, ModelMissingError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    report, probs = calibration_report(np.mean(members, axis=0), shared["labels"], shared["folds"],
                                       valid_logits, valid_labels, not args.temperature_only)
    report.update(source_model=predictor.tag, valid_data=str(args.data), cv_runs=[str(run) for run in args.cv_runs])
    args.out.mkdir(parents=True, exist_ok=True)
    plot_reliability(probs["oof_before"], probs["oof_after"], shared["labels"], args.out / "reliability_oof.png",
                     title="reliability (out of fold, cross-fitted)")
    plot_reliability(probs["valid_before"], probs["valid_after"], valid_labels, args.out / "reliability_valid.png",
                     title=f"reliability ({args.data.name}, calibration fitted out of fold)")
    valid = classification_report(valid_labels, probs["valid_after"].argmax(1))  # what the calibrated model answers
    info = predictor.info.model_copy(update={"temperature": report["temperature"], "class_bias": report["class_bias"],
                                             "metrics": {**predictor.info.metrics, "valid": valid, "calibration": report}})
    tag = save_with_info(predictor.tag, info)
    bias = ", ".join(f"{b:.3f}" for b in report["class_bias"])
    print(f"temperature {report['temperature']:.3f} (was {predictor.info.temperature:.3f}), class bias [{bias}] from "
          f"{report['n_fit']} out-of-fold slices; out of fold (cross-fitted): ECE {report['ece_oof_before']:.3f} -> "
          f"{report['ece_oof_after']:.3f}, accuracy {report['accuracy_oof_before']:.4f} -> {report['accuracy_oof_after']:.4f}, "
          f"macro-F1 {report['macro_f1_oof_before']:.4f} -> {report['macro_f1_oof_after']:.4f} (fold means); on {args.data} "
          f"ECE {report['ece_valid_before']:.3f} -> {report['ece_valid_after']:.3f}; saved as {tag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
