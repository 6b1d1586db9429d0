"""Calibration (temperature and class bias) fitted on out-of-fold logits: the fit, the cross-fitted report, and a real stored model."""

import filecmp
from pathlib import Path

import numpy as np
import pytest

from lungct.calibration import cross_fitted, fit_calibration
from lungct.store import ModelInfo
from lungct.predictor import Predictor, softmax
from lungct.preprocess import load_file
from training import calibrate, model_card
from training.ensemble_cv import load_members


def _overconfident(n: int = 3000, scale: float = 3.0, seed: int = 0, shift=(0.0, 0.0, 0.0, 0.0)):
    """Logits `scale` times too sharp, and `shift` below per class, for labels drawn from softmax(z); five folds."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, 4))
    labels = np.minimum((np.cumsum(softmax(z), axis=1) < rng.random((n, 1))).sum(axis=1), 3)  # drawn from softmax(z)
    return (z - np.asarray(shift)) * scale, z, labels, np.arange(n) % 5


def test_temperature_undoes_a_known_sharpening():
    logits, _, labels, _ = _overconfident()
    fit = fit_calibration(logits, labels, class_bias=False)
    assert fit.temperature == pytest.approx(3.0, rel=0.1) and fit.class_bias == [0.0] * 4


def test_class_bias_undoes_a_known_shift_and_helps_accuracy():
    shift = np.array([0.0, 1.0, -0.5, 1.5])  # the first class is the reference: its bias stays 0
    logits, z, labels, _ = _overconfident(n=20000, shift=shift)
    fit = fit_calibration(logits, labels)
    assert fit.temperature == pytest.approx(3.0, rel=0.05)
    np.testing.assert_allclose(fit.class_bias, shift, atol=0.1)
    calibrated = softmax(logits, *fit)
    assert np.abs(calibrated - softmax(z)).max() < 0.05
    assert (calibrated.argmax(1) == labels).mean() > (logits.argmax(1) == labels).mean() + 0.05
    temperature_only = fit_calibration(logits, labels, class_bias=False)  # a temperature cannot undo a shift
    assert np.abs(softmax(logits, *temperature_only) - softmax(z)).max() > 0.2


def test_model_info_takes_one_bias_per_class_and_reads_older_metadata_without_one():
    assert ModelInfo().class_bias == [0.0] * 4
    assert ModelInfo.model_validate({"temperature": 1.2}).class_bias == [0.0] * 4
    with pytest.raises(ValueError, match="class_bias has 3 values for 4 classes"):
        ModelInfo(class_bias=[0.0, 1.0, 2.0])


def test_cross_fitted_probabilities_never_use_their_own_fold():
    logits, z, labels, folds = _overconfident()
    probs = cross_fitted(logits, labels, folds)
    assert np.abs(probs - softmax(z)).max() < 0.1  # the sharpening is undone in every fold
    relabelled = np.where(folds == 0, (labels + 1) % 4, labels)  # fold 0's labels now wrong
    moved = cross_fitted(logits, relabelled, folds)
    assert np.array_equal(moved[folds == 0], probs[folds == 0])  # fold 0's own labels played no part
    assert not np.allclose(moved[folds == 1], probs[folds == 1])  # while they did for the others


def test_calibrate_saves_a_new_version_with_the_out_of_fold_calibration(tiny_ensemble, samples_dir, tmp_path, capsys):
    tag, runs, _ = tiny_ensemble
    args = ["--model", tag, "--data", str(samples_dir), "--out", str(tmp_path)]
    assert calibrate.main([*args, "--cv-runs", *map(str, runs)]) == 0
    new_tag = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    assert new_tag != tag
    old, new = Predictor.from_store(tag), Predictor.from_store(new_tag)
    members, shared = load_members(runs)
    fit = fit_calibration(np.mean(members, axis=0), shared["labels"])
    assert (new.info.temperature, new.info.class_bias) == (fit.temperature, fit.class_bias)
    cal = new.info.metrics["calibration"]
    assert cal["fitted_on"] == "out-of-fold" and cal["n_fit"] == len(shared["labels"])
    assert 0 <= cal["ece_oof_after"] <= 1 and 0 <= cal["ece_valid_after"] <= 1
    assert 0 <= cal["accuracy_oof_after"] <= 1 and 0 <= cal["macro_f1_oof_after"] <= 1
    assert new.info.metrics["valid"]["n"] == cal["n_valid"]
    assert old.info.metrics["calibration"]["fitted_on"] == "valid"  # the stored model itself is left as it was
    import bentoml

    assert filecmp.cmp(bentoml.models.get(tag).path_of("model.keras"), bentoml.models.get(new_tag).path_of("model.keras"),
                       shallow=False)  # the weights are copied unchanged
    batch = np.stack([load_file(path, new.info.preprocess) for path in sorted(Path(samples_dir).glob("*/*.png"))])
    np.testing.assert_array_equal(new.logits(batch), old.logits(batch))
    np.testing.assert_allclose(new.probabilities(batch), softmax(new.logits(batch), new.info.temperature, new.info.class_bias))
    assert {p.name for p in tmp_path.iterdir()} >= {"reliability_oof.png", "reliability_valid.png"}
    card = tmp_path / "MODEL_CARD.md"
    assert model_card.main(["--data", str(samples_dir), "--model", new_tag, "--out", str(card),
                            "--cv-runs", *map(str, runs)]) == 0
    assert f"out-of-fold logits over train+valid (n = {cal['n_fit']}" in card.read_text()
    with pytest.raises(SystemExit, match="seeds"):
        calibrate.main([*args, "--cv-runs", str(runs[0])])


def test_calibrate_names_a_missing_model(samples_dir, tmp_path):
    with pytest.raises(SystemExit, match="not in the BentoML model store"):
        calibrate.main(["--model", "lungct:nosuchversion", "--data", str(samples_dir), "--out", str(tmp_path),
                        "--cv-runs", str(tmp_path)])


def test_shipped_calibration_is_the_out_of_fold_fit_of_the_committed_scan_runs(shipped_tag):
    from lungct.store import SHIPPED_DIR, read_info

    info, _, _ = read_info(shipped_tag)
    runs = sorted((SHIPPED_DIR / "cv-scan").iterdir())
    members, shared = load_members(runs)
    cal = info.metrics["calibration"]
    assert cal["fitted_on"] == "out-of-fold" and cal["cv_runs"] == [f"models/cv-scan/{run.name}" for run in runs]
    fit = fit_calibration(np.mean(members, axis=0), shared["labels"])
    assert info.temperature == pytest.approx(fit.temperature, rel=1e-9)
    np.testing.assert_allclose(info.class_bias, fit.class_bias, atol=1e-9)
    assert cal["accuracy_oof_after"] > cal["accuracy_oof_before"]  # the cross-fitted bias helped out of fold


def test_calibration_of_separable_or_uninformative_logits_stays_within_bounds():
    from lungct.calibration import MAX_BIAS, MAX_TEMPERATURE, MIN_TEMPERATURE

    labels = np.array([0, 1, 2, 3, 0, 1])
    right = np.eye(4)[labels] * 5.0  # every slice right and sure: the likelihood grows as T falls
    assert MIN_TEMPERATURE <= fit_calibration(right, labels, class_bias=False).temperature < 0.5  # sharper, not 0
    wrong = -right  # every slice's own class the least likely: no positive temperature fits, so the flattest
    fit = fit_calibration(wrong, labels)
    assert fit.temperature == pytest.approx(MAX_TEMPERATURE)
    absent = np.array([0, 1, 1, 0, 1, 0])  # classes 2 and 3 never occur: their biases fall to the bound
    fit = fit_calibration(np.zeros((6, 4)), absent)
    assert fit.class_bias[2] == pytest.approx(-MAX_BIAS) and fit.class_bias[3] == pytest.approx(-MAX_BIAS)
    assert np.isfinite(softmax(right, *fit)).all()
