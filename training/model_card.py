"""`python -m training.model_card --data DIR [--model TAG] [--cv-runs RUN ...] [--scan-cv-runs RUN ...]
[--out models/MODEL_CARD.md]`: write the model card.

Every number comes from the stored metadata, from evaluating the model on DIR (bootstrap 95%
intervals over the images, 2,000 resamples, seed 0) or, for an ensemble, from the cross-validation
runs of its members (`--cv-runs`, one `training.train --cv K --cv-only --seed S` run per member; and
`--scan-cv-runs`, the same with `--scan-radius R`: folds by scan).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lungct.config import PreprocessConfig
from lungct.metrics import classification_report
from lungct.predictor import Predictor
from lungct.store import CARD_FILE, SHIPPED_DIR, ModelInfo
from training.ensemble_cv import check_members, ensemble_report, run_recipe
from training.evaluate import predict_files


def bootstrap(labels: np.ndarray, predicted: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    draws = [classification_report(labels[i], predicted[i]) for i in
             (rng.integers(0, len(labels), len(labels)) for _ in range(resamples))]
    return {key: tuple(np.percentile([d[key] for d in draws], (2.5, 97.5))) for key in ("accuracy", "macro_f1")}


def _intensity(config: PreprocessConfig) -> str:
    if config.intensity == "equalize":
        return "histogram equalisation over the body"
    return f"contrast stretch between the {config.low_percentile} and {config.high_percentile} percentiles"


def _crop(config: PreprocessConfig) -> str:
    if not config.crop_foreground:
        return "no crop"
    if config.crop_to == "lungs":
        return f"crop to the lungs' box (the air the body encloses) with a margin of {config.lung_margin:g} of its longer side"
    return "crop to the body"


def _resize(config: PreprocessConfig) -> str:
    square = f"{config.size}x{config.size}"
    if config.keep_aspect:
        return f"resize keeping the aspect ratio onto a black {square} square"
    return f"stretch to a {square} square (aspect ratio not kept)"


def _stopping(info: ModelInfo) -> tuple[str, str]:
    """How the members' length was set, and what that means for the valid figures."""
    if info.train.stops_early:
        return (f"early stopping on valid accuracy (patience {info.train.patience}, from epoch {info.train.epochs // 2})",
                "and valid accuracy also chose each member's stopping epoch (early stopping restores the best epoch), ")
    return f"all {info.train.epochs} epochs trained, as in cross-validation (no early stopping)", ""


def members_cv(info: ModelInfo, runs: list[Path]) -> dict:
    """Grouped CV of an ensemble from its members' CV runs, after checking they are its recipe and seeds."""
    check_members(info, runs)
    cv = {**ensemble_report(runs)["ensemble"], "recipe": run_recipe(runs[0])}
    if any(info.class_bias):  # the model answers with a class bias: score that too, calibrated out of fold
        cv["calibrated"] = ensemble_report(runs, calibrate=True)["ensemble"]
    return cv


def _by_scan(train: dict) -> bool:
    return train.get("scan_radius", 0) > 0


def _cv_text(cv: dict | None, runs: list[Path] | None) -> str:
    """One CV result in words: folds, accuracy and macro-F1 over folds, and how the ensemble's was computed."""
    if not cv:
        return "not run for this model"
    train = cv.get("recipe", {}).get("train", {})
    kind = (f"CV by scan over train+valid (duplicates, and slices closer than view distance {train['scan_radius']:g} "
            f"as one scan, groups of at most {train['scan_cap']}, kept in one fold)" if _by_scan(train)
            else "grouped CV over train+valid")
    folds = ", ".join(f"{fold['accuracy']:.3f}" for fold in cv["folds"])
    text = (f"{cv['k']}-fold {kind}: accuracy {cv['accuracy_mean']:.3f} ± {cv['accuracy_std']:.3f}, "
            f"macro-F1 {cv['macro_f1_mean']:.3f} ± {cv['macro_f1_std']:.3f} (mean ± standard deviation over folds; "
            f"fold accuracies: {folds})")
    if runs:
        text += (f"; the members' out-of-fold logits averaged, from one CV run per member seed "
                 f"(`python -m training.ensemble_cv {' '.join(map(str, runs))}`)")
    if "calibrated" in cv:
        calibrated = cv["calibrated"]
        folds = ", ".join(f"{fold['accuracy']:.3f}" for fold in calibrated["folds"])
        text += (f"; calibrated as this model answers (temperature and class bias, each fold's fitted on the other folds, "
                 f"`--calibrate`): accuracy **{calibrated['accuracy_mean']:.3f}** ± {calibrated['accuracy_std']:.3f}, "
                 f"macro-F1 {calibrated['macro_f1_mean']:.3f} ± {calibrated['macro_f1_std']:.3f} (fold accuracies: {folds})")
    return text


def _cv_commands(info: ModelInfo, cv: dict, data: str) -> str:
    """The training commands of an ensemble's members' CV runs."""
    train = cv["recipe"]["train"]
    flags = f" --scan-radius {train['scan_radius']:g} --scan-cap {train['scan_cap']}" if _by_scan(train) else ""
    return "".join(f".venv/bin/python -m training.train --data {data} --cv {cv['k']} --cv-only --ensemble 1 --seed {seed}{flags}\n"
                   for seed in range(info.train.seed, info.train.seed + info.model.ensemble))


def render(predictor: Predictor, data_dir: Path, cv_runs: list[Path] | None = None,
           scan_cv_runs: list[Path] | None = None) -> str:
    info = predictor.info
    labels, probabilities, _ = predict_files(predictor, data_dir)
    predicted = probabilities.argmax(axis=1)
    report = classification_report(labels, predicted)
    ci = bootstrap(labels, predicted)
    cv = members_cv(info, cv_runs) if cv_runs else info.metrics.get("cv")
    scan_cv = members_cv(info, scan_cv_runs) if scan_cv_runs else None
    if scan_cv and not _by_scan(scan_cv["recipe"]["train"]):
        raise SystemExit("error: --scan-cv-runs takes CV runs made with --scan-radius")
    recall = "\n".join(f"| {name} | {row['recall']:.3f} | {row['precision']:.3f} | {row['support']} |"
                       for name, row in report["per_class"].items())
    cv_text = _cv_text(cv, cv_runs)
    if scan_cv:
        cv_text += f".\n\nCross-validation by scan, the nearest this data comes to new scans: {_cv_text(scan_cv, scan_cv_runs)}"
    fold_recall = _fold_recall(cv) if cv else ""
    scan_note = (f": CV by scan, which keeps most of a scan's neighbouring slices in one fold, puts it at "
                 f"{scan_cv.get('calibrated', scan_cv)['accuracy_mean']:.3f}" if scan_cv else "")
    stopping, stopped_on_valid = _stopping(info)
    runs = " ".join(str(r) for r in cv_runs or [])
    flags = "".join(f" --{name} {' '.join(map(str, r))}" for name, r in (("cv-runs", cv_runs), ("scan-cv-runs", scan_cv_runs)) if r)
    data = "../shared/data/chest-ctscan-images/Data"
    cv_commands = "".join(_cv_commands(info, c, data) for c, r in ((cv, cv_runs), (scan_cv, scan_cv_runs)) if r)
    return f"""# Model card: {predictor.tag}

## Intended use
Research on chest CT slice classification into {', '.join(info.classes)}.
**Research use only, not for diagnosis.** Not validated clinically; must not inform patient care.

## Data and splits
Kaggle "Chest CT-Scan images" (CC0): train 613 and valid 72 slices exported as PNG/JPEG, in
Kaggle's folders. Exact duplicates are kept once for training; files whose bytes carry two labels are
dropped. The official test split (315 slices, tumour slices from other scans) was never used to choose
anything. Training-set fingerprint: `{info.data_fingerprint[:16]}…`.

## Preprocessing (stored in the model's metadata; serving re-reads it)
Decode by content (PNG, JPEG, DICOM with a lung window), greyscale, {_crop(info.preprocess)},
{_resize(info.preprocess)}, {_intensity(info.preprocess)}.

## Model and training
{_architecture(info)} from scratch: {info.model.model_dump()}.
Training: {info.train.model_dump()}; AdamW with warm-up and cosine decay, class weights, augmentation
(mirror, rotation, zoom, shift, contrast), {stopping}.
Training time of this model: {info.training_seconds:.0f} s on 2 CPU cores; Keras {info.versions.get('keras')},
TensorFlow {info.versions.get('tensorflow')}.

## Metrics
On `{data_dir}` (n = {report['n']}): accuracy **{report['accuracy']:.3f}** (95% CI {ci['accuracy'][0]:.3f}–{ci['accuracy'][1]:.3f}),
macro-F1 **{report['macro_f1']:.3f}** (95% CI {ci['macro_f1'][0]:.3f}–{ci['macro_f1'][1]:.3f}).

| class | recall | precision | support |
|---|---|---|---|
{recall}

Confusion matrix (rows true, columns predicted, order as above): `{report['confusion_matrix']}`.

Cross-validation: {cv_text}.
{fold_recall}

Valid shares scans (and many near-duplicate slices) with train, {stopped_on_valid}so the valid figures are optimistic;
grouped CV (fixed epochs, exact and near duplicates kept in one fold) is the more honest estimate, yet
neighbouring slices of one scan still fall into different folds, and tumour slices with no look-alike in
their training folds are right far less often (`python -m training.fold_leak {runs or 'RUN'} --data {data}`;
STUDIES.md "How far CV is from new scans"). Expect much lower accuracy on new scans{scan_note}. The recipe
studies behind this model are in STUDIES.md (summary: README.md, "Model studies").

## Calibration
{_calibration(info)}

## Known shortcuts and limits
- Normal slices in this dataset are larger and more often RGB; preprocessing converts to greyscale
  and crops/resizes to the body, and a test checks that converting a tumour slice to RGB and scaling it
  to a normal slice's size does not change the prediction.
- Many duplicates: the normal class holds few distinct slices, so a normal slice unlike those seen in
  training is easily called a tumour (the normal column of the per-fold recall above).
- Windowing: most tumour slices come from one numbered series exported with a wider window (soft tissue
  grey) than the normal slices and the few tumour files of other origin (soft tissue near white). Tumour
  slices windowed like the normal ones are often called normal (the `training.fold_leak` command above
  prints accuracy, calls of normal and body brightness per series; STUDIES.md "How far CV is from new
  scans").
- One 2-D slice at a time, no volume context; Grad-CAM (`/explain`) shows where the evidence lies but
  is not a localisation.

## Reproduce
```bash
make train                      # trains this recipe and saves it into the BentoML store (add --cv 5 for CV)
{cv_commands}.venv/bin/python -m training.evaluate --data {data} --split valid --model {predictor.tag}
.venv/bin/python -m training.model_card --data {data}/valid --model {predictor.tag}{flags}
```
"""


def _calibration(info: ModelInfo) -> str:
    """What the stored metadata says about the calibration: where it was fitted, ECE and accuracy before/after."""
    cal = info.metrics.get("calibration")
    if cal is None:
        return f"Temperature T = {info.temperature:.3f}; how it was fitted is not recorded in this model's metadata."
    valid = (f"Expected calibration error on valid (10 bins): {cal['ece_valid_before']:.3f} before, "
             f"{cal['ece_valid_after']:.3f} after; negative log-likelihood {cal['nll_valid_before']:.3f} before, "
             f"{cal['nll_valid_after']:.3f} after")
    if cal["fitted_on"] == "valid":
        return (f"Temperature scaling fitted on valid (n = {cal['n_fit']}): T = {info.temperature:.3f}; served probabilities "
                f"are calibrated. {valid} (fitted and measured on the same images, so the \"after\" figures are "
                f"optimistic). Reliability diagram: `reliability_valid.png` in the training run's folder.")
    runs = " ".join(cal["cv_runs"])
    chose = "; valid also chose its stopping epochs" if info.train.stops_early else ""
    bias = ", ".join(f"{name} {b:+.3f}" for name, b in zip(info.classes, info.class_bias))
    accuracy = (f" Accuracy out of fold {cal['accuracy_oof_before']:.3f} before, {cal['accuracy_oof_after']:.3f} after; "
                f"macro-F1 {cal['macro_f1_oof_before']:.3f} before, {cal['macro_f1_oof_after']:.3f} after (fold means, "
                f"calibrated the same way).") if "accuracy_oof_after" in cal else ""
    return (f"Calibration fitted on the ensemble's out-of-fold logits over train+valid (n = {cal['n_fit']}, "
            f"members' CV runs {runs}): served probabilities are softmax(logits / T + b) with T = {info.temperature:.3f} "
            f"and class bias b: {bias}.\n"
            f"Expected calibration error out of fold (10 bins): {cal['ece_oof_before']:.3f} before, {cal['ece_oof_after']:.3f} "
            f"after (each fold calibrated by a fit on the other folds).{accuracy} {valid} (the model itself on "
            f"`{cal['valid_data']}`, n = {cal['n_valid']}{chose}). Reliability "
            f"diagrams beside this card: `reliability_oof.png`, `reliability_valid.png`.\n"
            f"Reproduce: `.venv/bin/python -m training.calibrate --model {cal['source_model']} --cv-runs {runs} "
            f"--data {cal['valid_data']}` (saves a new version of that model with the calibration).")


def _fold_recall(cv: dict) -> str:
    """A per-fold recall table from a CV summary; empty for summaries that predate per-class recall."""
    if not all("recall" in fold for fold in cv["folds"]):
        return ""
    names = list(cv["folds"][0]["recall"])
    rows = "\n".join(f"| {index} | {fold['n']} | " + " | ".join(f"{fold['recall'][name]:.3f}" for name in names) + " |"
                     for index, fold in enumerate(cv["folds"], 1))
    return (f"\nRecall per CV fold:\n\n| fold | n | {' | '.join(names)} |\n|---|---|{'---|' * len(names)}\n{rows}")


def _architecture(info: ModelInfo) -> str:
    if info.model.ensemble == 1:
        return "Residual CNN"
    return (f"Ensemble of {info.model.ensemble} residual CNNs (training seeds {info.train.seed}.."
            f"{info.train.seed + info.model.ensemble - 1}, logits averaged; one Keras model)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=Path, required=True, help="folder of class folders to evaluate on")
    p.add_argument("--model", default="lungct:latest")
    p.add_argument("--cv-runs", type=Path, nargs="+", help="CV run folders of an ensemble's members (seeds in order)")
    p.add_argument("--scan-cv-runs", type=Path, nargs="+",
                   help="CV runs of the members made with --scan-radius (folds by scan), reported beside --cv-runs")
    p.add_argument("--out", type=Path, default=SHIPPED_DIR / CARD_FILE)
    args = p.parse_args(argv)
    args.out.write_text(render(Predictor.from_store(args.model), args.data, args.cv_runs, args.scan_cv_runs))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
