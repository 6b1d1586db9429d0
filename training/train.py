"""`python -m training.train --data PATH`: train the residual CNN and save it into the BentoML model store."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import get_args

import numpy as np
from pydantic import ValidationError

from lungct.calibration import fit_calibration, valid_calibration
from lungct.config import ModelConfig, PreprocessConfig, TrainConfig
from lungct.dataset import DatasetError, fingerprint, grouped_folds, list_samples, resolve_split
from lungct.labels import CLASSES
from lungct.metrics import classification_report, cv_summary, format_report
from lungct.predictor import softmax
from lungct.store import ModelInfo, framework_versions, save_to_store, stamp
from training.data import (LoadedSet, clean_training_set, concat, load_set, make_dataset, sample_weights,
                           series_of)

log = logging.getLogger("lungct.training")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=Path, required=True, help="Kaggle root (Data/ with train/ and valid/) or a folder of class folders")
    p.add_argument("--cv", type=int, default=0, metavar="K", help="grouped K-fold cross-validation over train+valid first")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="where run folders (curves, confusion matrix, metrics.json) go")
    p.add_argument("--cv-only", action="store_true", help="stop after cross-validation (a study run)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue the stopped CV run in folder RUN (same flags)")
    p.add_argument("--no-save", action="store_true", help="do not save into the BentoML model store")
    for cls in (PreprocessConfig, ModelConfig, TrainConfig):
        for name, field in cls.model_fields.items():
            p.add_argument(f"--{name.replace('_', '-')}", default=None, help=field.description, **_arg_kind(field))
    return p.parse_args(argv)


def _arg_kind(field) -> dict:
    """argparse options for a config field: --x/--no-x for booleans, choices for literals."""
    if isinstance(field.default, bool):
        return {"action": argparse.BooleanOptionalAction}
    return {"type": type(field.default), "choices": get_args(field.annotation) or None}


def configs_from(args: argparse.Namespace) -> tuple[PreprocessConfig, ModelConfig, TrainConfig]:
    def pick(cls):
        return cls(**{k: getattr(args, k) for k in cls.model_fields if getattr(args, k, None) is not None})

    return pick(PreprocessConfig), pick(ModelConfig), pick(TrainConfig)


def load_splits(data: Path, config: PreprocessConfig, seed: int) -> tuple[LoadedSet, LoadedSet]:
    """Kaggle train/valid when present, else a grouped hold-out fifth of a folder of class folders."""
    try:
        train_dir, valid_dir = resolve_split(data, "train"), resolve_split(data, "valid")
    except DatasetError:
        everything = load_set(list_samples(data), config)
        folds = grouped_folds(everything.groups(), everything.labels, 5, seed)
        train = everything.subset(np.flatnonzero(folds != 0))
        train.skipped = everything.skipped
        return train, everything.subset(np.flatnonzero(folds == 0))
    return load_set(list_samples(train_dir), config), load_set(list_samples(valid_dir), config)


class EpochSummary:
    """A Keras callback printing one line per epoch."""

    def __new__(cls, epochs: int):
        import keras

        class _Summary(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                parts = " ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "learning_rate")
                print(f"epoch {epoch + 1}/{epochs} {parts} ({time.perf_counter() - self.start:.1f}s)", flush=True)

        return _Summary()


class WeightAverage:
    """A Keras callback for stochastic weight averaging: the running mean of the trainable weights at the end
    of every epoch from `first_epoch` (0-based) on replaces them when training ends (batch-norm statistics are
    re-estimated afterwards)."""

    def __new__(cls, first_epoch: int):
        import keras

        class _Average(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.mean, self.count = None, 0

            def on_epoch_end(self, epoch, logs=None):
                if epoch < first_epoch:
                    return
                weights, self.count = [v.numpy() for v in self.model.trainable_weights], self.count + 1
                self.mean = weights if self.mean is None else [m + (w - m) / self.count for m, w in zip(self.mean, weights)]

            def on_train_end(self, logs=None):
                for variable, mean in zip(self.model.trainable_weights, self.mean or []):
                    variable.assign(mean)

        return _Average()


def fit(train: LoadedSet, valid: LoadedSet | None, pcfg: PreprocessConfig, mcfg: ModelConfig, tcfg: TrainConfig):
    """Train `mcfg.ensemble` members (seeds seed, seed+1, ...) and average them; histories per member."""
    from lungct.model import average_ensemble

    members, histories = [], []
    for index in range(mcfg.ensemble):
        model, history = fit_one(train, valid, pcfg, mcfg, tcfg.model_copy(update={"seed": tcfg.seed + index}))
        members.append(model)
        histories.append(history)
    return average_ensemble(members), histories


def learning_rate_schedule(tcfg: TrainConfig, steps_per_epoch: int):
    """Linear warm-up, then a cosine decay to zero, or with SWA to swa_lr, held for the averaged epochs."""
    import keras

    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, steps_per_epoch * (tcfg.epochs - tcfg.warmup_epochs - tcfg.swa_epochs)),
        warmup_target=tcfg.learning_rate, warmup_steps=steps_per_epoch * tcfg.warmup_epochs,
        alpha=tcfg.swa_lr / tcfg.learning_rate if tcfg.swa_epochs else 0.0,
    )


def fit_one(train: LoadedSet, valid: LoadedSet | None, pcfg: PreprocessConfig, mcfg: ModelConfig, tcfg: TrainConfig):
    """Train one model from scratch for all epochs; with a valid set and a patience, early stopping on valid
    accuracy (not with EMA or SWA, whose averaged weights become the model when fit ends)."""
    import keras

    from lungct.model import build_model

    keras.utils.set_random_seed(tcfg.seed)
    train = clean_training_set(train)
    model = build_model(mcfg, pcfg.size)
    schedule = learning_rate_schedule(tcfg, steps_per_epoch=int(np.ceil(len(train.labels) / tcfg.batch_size)))
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=tcfg.weight_decay, use_ema=tcfg.ema > 0,
                                         ema_momentum=tcfg.ema or 0.99),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=tcfg.label_smoothing),
        metrics=["accuracy"],
    )
    callbacks = [EpochSummary(tcfg.epochs)]
    if tcfg.swa_epochs:
        callbacks.append(WeightAverage(tcfg.epochs - tcfg.swa_epochs))
    val_ds = None
    if valid is not None:
        val_ds = make_dataset(valid.images, valid.labels, 64)
    if valid is not None and tcfg.stops_early:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=tcfg.patience, restore_best_weights=True,
            start_from_epoch=tcfg.epochs // 2))
    history = model.fit(
        make_dataset(train.images, train.labels, tcfg.batch_size, tcfg,
                     sample_weights(train.labels, train.thumbnails, tcfg.density_radius,
                                    series_of([s.path.name for s in train.samples]), tcfg.series_balance)),
        validation_data=val_ds, epochs=tcfg.epochs,
        callbacks=callbacks, verbose=1,
    )
    if tcfg.averages_weights:
        recalibrate_batch_norm(model, train.images, tcfg.batch_size)
    return model, {k: [float(v) for v in vs] for k, vs in history.history.items()}


def recalibrate_batch_norm(model, images: np.ndarray, batch_size: int, passes: int = 3) -> None:
    """Re-estimate batch-norm moving statistics for the model's current weights from forward passes in
    training mode (averaged EMA or SWA weights do not match the statistics gathered along the way)."""
    for _ in range(passes):
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size], training=True)


def predict_logits(model, images: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(images, batch_size=64, verbose=0))


def cross_validate(data: LoadedSet, k: int, pcfg, mcfg, tcfg, run_dir: Path) -> dict:
    """Grouped K-fold CV: duplicates and near duplicates always stay in one fold, and with a scan radius
    most of a scan's neighbouring slices too; fixed epochs, no early stopping.

    The folds have their own seed, so runs with other training seeds are scored on the same folds;
    out-of-fold logits, and those of the mirrored slices, go to run_dir/oof.npz for ensemble and
    test-time augmentation studies (training.ensemble_cv). oof.npz is written after every fold, so a
    stopped run resumes (`--resume RUN`) at its first unfinished fold."""
    folds = grouped_folds(data.groups(tcfg.scan_radius, tcfg.scan_cap), data.labels, k, tcfg.fold_seed)
    recipe = {"preprocess": pcfg.model_dump(), "model": mcfg.model_dump(), "train": tcfg.model_dump()}
    state = resume_state(run_dir, recipe, folds, data)
    for fold in range(k):
        if state["done"][fold]:
            print(f"fold {fold + 1}/{k}: done in an earlier run of {run_dir}", flush=True)
            continue
        started = time.perf_counter()
        held = np.flatnonzero(folds == fold)
        model, _ = fit(data.subset(np.flatnonzero(folds != fold)), None, pcfg, mcfg, tcfg)
        state["logits"][held] = predict_logits(model, data.images[held])
        state["mirrored_logits"][held] = predict_logits(model, data.images[held][:, :, ::-1])
        state["done"][fold] = True
        state["seconds"] += time.perf_counter() - started
        run_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(run_dir / "oof.npz", **state)
        report = classification_report(data.labels[held], state["logits"][held].argmax(1))
        print(f"fold {fold + 1}/{k}: n {report['n']} accuracy {report['accuracy']:.4f} macro-F1 {report['macro_f1']:.4f}", flush=True)
    summary = cv_summary(state["logits"], data.labels, folds)
    print(f"{k}-fold grouped CV: accuracy {summary['accuracy_mean']:.4f} ± {summary['accuracy_std']:.4f}, "
          f"macro-F1 {summary['macro_f1_mean']:.4f} ± {summary['macro_f1_std']:.4f}")
    return {**summary, "seconds": round(float(state["seconds"]), 1), "recipe": recipe}


def resume_state(run_dir: Path, recipe: dict, folds: np.ndarray, data: LoadedSet) -> dict[str, np.ndarray]:
    """The CV state in run_dir/oof.npz when it was written by this recipe on these folds and data, else a fresh one."""
    fresh = {"logits": np.zeros((len(data.labels), len(CLASSES)), dtype=np.float32), "labels": data.labels,
             "folds": folds, "digests": np.array(data.digests), "done": np.zeros(folds.max() + 1, dtype=bool),
             "seconds": np.float64(0.0), "recipe": np.array(json.dumps(recipe, sort_keys=True))}
    fresh["mirrored_logits"] = np.zeros_like(fresh["logits"])
    path = run_dir / "oof.npz"
    if not path.is_file():
        return fresh
    with np.load(path) as saved:
        state = {key: saved[key] for key in saved.files}
    if "done" not in state:
        raise SystemExit(f"error: {path} is from a finished run of an older version, which cannot resume")
    if str(state["recipe"]) != str(fresh["recipe"]):
        raise SystemExit(f"error: {path} was written by another recipe: give the flags of the run you resume")
    if not (np.array_equal(state["folds"], folds) and np.array_equal(state["digests"], fresh["digests"])):
        raise SystemExit(f"error: {path} was cross-validated on other folds or data")
    return state


def write_run(run_dir: Path, histories: list[dict], metrics: dict, logits: np.ndarray, labels: np.ndarray,
              temperature: float) -> None:
    from training.plots import plot_confusion, plot_history, plot_reliability

    run_dir.mkdir(parents=True, exist_ok=True)
    plot_history(histories, run_dir / "curves.png")
    plot_reliability(softmax(logits), softmax(logits, temperature), labels, run_dir / "reliability_valid.png")
    plot_confusion(metrics["valid"]["confusion_matrix"], run_dir / "confusion_valid.png")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        pcfg, mcfg, tcfg = configs_from(args)
    except ValidationError as exc:
        raise SystemExit(f"error: {exc}") from exc
    if args.resume and not (args.cv and (args.resume / "oof.npz").is_file()):
        raise SystemExit(f"error: --resume needs --cv and a CV run folder with oof.npz; {args.resume} has none")
    run_dir = args.resume or args.runs / stamp()
    started = time.perf_counter()
    try:
        train, valid = load_splits(args.data, pcfg, tcfg.fold_seed)
    except (DatasetError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    skipped = train.skipped + valid.skipped
    metrics: dict = {}
    if args.cv:
        try:
            metrics["cv"] = cross_validate(concat(train, valid), args.cv, pcfg, mcfg, tcfg, run_dir)
        except DatasetError as exc:
            raise SystemExit(f"error: {exc}") from exc
        if args.cv_only:
            (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            print(f"summary: cross-validation only, run {run_dir}")
            return 0
    fit_started = time.perf_counter()
    model, histories = fit(train, valid, pcfg, mcfg, tcfg)
    fit_seconds = time.perf_counter() - fit_started
    logits = predict_logits(model, valid.images)
    # temperature only: valid shares scans with train; training.calibrate fits a class bias out of fold
    calibration = fit_calibration(logits, valid.labels, class_bias=False)
    temperature = calibration.temperature
    report = classification_report(valid.labels, logits.argmax(1))
    metrics["valid"] = report
    metrics["calibration"] = {"fitted_on": "valid", "temperature": temperature, "n_fit": len(valid.labels),
                              **valid_calibration(logits, valid.labels, calibration)}
    print(format_report(report))
    info = ModelInfo(
        preprocess=pcfg, model=mcfg, train=tcfg, temperature=temperature,
        data_fingerprint=fingerprint(train.samples + valid.samples),
        metrics=metrics, versions=framework_versions(), training_seconds=round(fit_seconds, 1),
    )
    write_run(run_dir, histories, metrics, logits, valid.labels, temperature)
    tag = "(not saved)" if args.no_save else save_to_store(model, info)
    print(
        f"summary: train {len(train.labels)} valid {len(valid.labels)} skipped {len(skipped)} "
        f"valid accuracy {report['accuracy']:.4f} macro-F1 {report['macro_f1']:.4f} temperature {temperature:.3f} "
        f"fit {fit_seconds:.0f}s total {time.perf_counter() - started:.0f}s model {tag} run {run_dir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
