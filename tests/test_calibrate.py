"""Temperature scaling fitted on out-of-fold logits: the fit, the cross-fitted report, and a real stored model."""

import filecmp
from pathlib import Path

import numpy as np
import pytest

from lungct.calibration import fit_temperature
from lungct.predictor import Predictor, softmax
from lungct.preprocess import load_file
from training import calibrate, model_card
from training.ensemble_cv import load_members


def _overconfident(n: int = 3000, scale: float = 3.0, seed: int = 0):
    """Logits `scale` times too sharp for labels drawn from softmax(z), and five folds."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, 4))
    labels = np.minimum((np.cumsum(softmax(z), axis=1) < rng.random((n, 1))).sum(axis=1), 3)  # drawn from softmax(z)
    return z * scale, z, labels, np.arange(n) % 5


def test_temperature_undoes_a_known_sharpening():
    logits, _, labels, _ = _overconfident()
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.1)


def test_cross_fitted_probabilities_never_use_their_own_fold():
    logits, z, labels, folds = _overconfident()
    probs = calibrate.cross_fitted(logits, labels, folds)
    assert np.abs(probs - softmax(z)).max() < 0.1  # the sharpening is undone in every fold
    relabelled = np.where(folds == 0, (labels + 1) % 4, labels)  # fold 0's labels now wrong
    moved = calibrate.cross_fitted(logits, relabelled, folds)
    assert np.array_equal(moved[folds == 0], probs[folds == 0])  # fold 0's own labels played no part
    assert not np.allclose(moved[folds == 1], probs[folds == 1])  # while they did for the others


def test_calibrate_saves_a_new_version_with_the_out_of_fold_temperature(tiny_ensemble, samples_dir, tmp_path, capsys):
    tag, runs, _ = tiny_ensemble
    args = ["--model", tag, "--data", str(samples_dir), "--out", str(tmp_path)]
    assert calibrate.main([*args, "--cv-runs", *map(str, runs)]) == 0
    new_tag = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    assert new_tag != tag
    old, new = Predictor.from_store(tag), Predictor.from_store(new_tag)
    members, shared = load_members(runs)
    assert new.info.temperature == fit_temperature(np.mean(members, axis=0), shared["labels"])
    cal = new.info.metrics["calibration"]
    assert cal["fitted_on"] == "out-of-fold" and cal["n_fit"] == len(shared["labels"])
    assert 0 <= cal["ece_oof_after"] <= 1 and 0 <= cal["ece_valid_after"] <= 1
    assert old.info.metrics["calibration"]["fitted_on"] == "valid"  # the stored model itself is left as it was
    import bentoml

    assert filecmp.cmp(bentoml.models.get(tag).path_of("model.keras"), bentoml.models.get(new_tag).path_of("model.keras"),
                       shallow=False)  # the weights are copied unchanged
    batch = np.stack([load_file(path, new.info.preprocess) for path in sorted(Path(samples_dir).glob("*/*.png"))])
    np.testing.assert_array_equal(new.logits(batch), old.logits(batch))
    np.testing.assert_allclose(new.probabilities(batch), softmax(new.logits(batch), new.info.temperature))
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


def test_shipped_temperature_is_the_out_of_fold_fit_of_the_committed_runs(shipped_tag):
    from lungct.store import SHIPPED_DIR, read_info

    info, _, _ = read_info(shipped_tag)
    members, shared = load_members(sorted((SHIPPED_DIR / "cv").iterdir()))
    assert info.metrics["calibration"]["fitted_on"] == "out-of-fold"
    assert info.temperature == fit_temperature(np.mean(members, axis=0), shared["labels"])
