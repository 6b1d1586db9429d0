import re

import numpy as np
import pytest

from training import model_card
from training.ensemble_cv import ensemble_report


def test_bootstrap_interval_brackets_the_point_estimate():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    predicted = np.where(rng.random(200) < 0.8, labels, (labels + 1) % 4)
    ci = model_card.bootstrap(labels, predicted, resamples=300)
    accuracy = (labels == predicted).mean()
    assert ci["accuracy"][0] < accuracy < ci["accuracy"][1]
    assert 0.0 <= ci["macro_f1"][0] < ci["macro_f1"][1] <= 1.0


def test_model_card_is_written_from_metadata_and_evaluation(shipped_tag, samples_dir, tmp_path):
    out = tmp_path / "MODEL_CARD.md"
    assert model_card.main(["--data", str(samples_dir), "--model", shipped_tag, "--out", str(out)]) == 0
    card = out.read_text()
    assert shipped_tag in card and "Research use only, not for diagnosis" in card
    assert re.search(r"accuracy \*\*\d\.\d{3}\*\* \(95% CI \d\.\d{3}–\d\.\d{3}\)", card)
    assert "T = " in card and "n = 8" in card


def test_ensemble_card_takes_cv_from_its_members_runs(tiny_ensemble, samples_dir, tmp_path):
    from training import train

    tag, runs, recipe = tiny_ensemble
    out = tmp_path / "MODEL_CARD.md"
    args = ["--data", str(samples_dir), "--model", tag, "--out", str(out)]
    assert model_card.main([*args, "--cv-runs", *map(str, runs)]) == 0
    card = out.read_text()
    assert "Ensemble of 2 residual CNNs" in card
    assert re.search(r"2-fold grouped CV over train\+valid: accuracy \d\.\d{3} ± \d\.\d{3}.*training\.ensemble_cv", card)
    assert "--cv-only --ensemble 1 --seed 1338" in card
    assert re.search(r"\| 2 \| \d+( \| \d\.\d{3}){4} \|", card)  # recall per fold and class
    assert re.search(r"Temperature scaling fitted on valid \(n = \d+\): T = \d\.\d{3}", card)
    with pytest.raises(SystemExit, match="seeds"):
        model_card.main([*args, "--cv-runs", str(runs[0])])
    with pytest.raises(SystemExit, match="made with --scan-radius"):
        model_card.main([*args, "--cv-runs", *map(str, runs), "--scan-cv-runs", *map(str, runs)])
    assert train.main([*recipe, "--cv", "2", "--cv-only", "--ensemble", "1", "--seed", "1338", "--mixup", "0.2",
                       "--runs", str(tmp_path / "other")]) == 0
    with pytest.raises(SystemExit, match="another recipe"):
        model_card.main([*args, "--cv-runs", str(runs[0]), str(next((tmp_path / "other").iterdir()))])


def test_card_adds_cv_by_scan_from_the_members_scan_runs(tiny_ensemble, samples_dir, tmp_path):
    from training import train

    tag, runs, recipe = tiny_ensemble
    scan_runs = []
    for seed in (1337, 1338):
        out_dir = tmp_path / str(seed)
        assert train.main([*recipe, "--cv", "2", "--cv-only", "--ensemble", "1", "--seed", str(seed),
                           "--scan-radius", "0.5", "--scan-cap", "3", "--runs", str(out_dir)]) == 0
        scan_runs.append(next(out_dir.iterdir()))
    out = tmp_path / "MODEL_CARD.md"
    assert model_card.main(["--data", str(samples_dir), "--model", tag, "--out", str(out), "--cv-runs", *map(str, runs),
                            "--scan-cv-runs", *map(str, scan_runs)]) == 0
    card = out.read_text()
    scan_cv = ensemble_report(scan_runs)["ensemble"]
    assert re.search(r"2-fold grouped CV over train\+valid: accuracy", card)
    assert (f"2-fold CV by scan over train+valid (duplicates, and slices closer than view distance 0.5 as one scan, "
            f"groups of at most 3, kept in one fold): accuracy {scan_cv['accuracy_mean']:.3f} ± "
            f"{scan_cv['accuracy_std']:.3f}") in card
    assert "--cv-only --ensemble 1 --seed 1338 --scan-radius 0.5 --scan-cap 3" in card
    assert f"--scan-cv-runs {scan_runs[0]} {scan_runs[1]}" in card


def test_shipped_card_cv_figures_come_from_the_committed_member_runs(shipped_tag):
    from lungct.store import SHIPPED_DIR, read_info

    info, _, _ = read_info(shipped_tag)
    runs = sorted((SHIPPED_DIR / "cv").iterdir())
    assert len(runs) == info.model.ensemble
    cv = model_card.members_cv(info, runs)  # raises unless the runs are the shipped recipe and seeds
    card = (SHIPPED_DIR / "MODEL_CARD.md").read_text()
    assert f"accuracy {cv['accuracy_mean']:.3f} ± {cv['accuracy_std']:.3f}" in card
    for index, fold in enumerate(cv["folds"], 1):
        assert f"| {index} | {fold['n']} | " + " | ".join(f"{r:.3f}" for r in fold["recall"].values()) + " |" in card
    assert shipped_tag in card
    scan_cv = model_card.members_cv(info, sorted((SHIPPED_DIR / "cv-scan").iterdir()))
    assert scan_cv["recipe"]["train"]["scan_radius"] > 0
    assert (f"CV by scan over train+valid (duplicates, and slices closer than view distance "
            f"{scan_cv['recipe']['train']['scan_radius']:g}") in card
    assert f"accuracy {scan_cv['accuracy_mean']:.3f} ± {scan_cv['accuracy_std']:.3f}" in card
    calibrated = scan_cv["calibrated"]  # the shipped model has a class bias: its calibrated CV is reported too
    assert calibrated["accuracy_mean"] != scan_cv["accuracy_mean"]
    assert f"accuracy **{calibrated['accuracy_mean']:.3f}** ± {calibrated['accuracy_std']:.3f}" in card
    assert f"puts it at {calibrated['accuracy_mean']:.3f}" in card


def test_card_names_the_models_intensity_normalisation():
    from lungct.config import PreprocessConfig
    from training.model_card import _intensity

    assert _intensity(PreprocessConfig()) == "contrast stretch between the 0.5 and 99.5 percentiles"
    assert _intensity(PreprocessConfig(intensity="equalize")) == "histogram equalisation over the body"


def test_card_names_the_models_crop():
    from lungct.config import PreprocessConfig
    from training.model_card import _crop

    assert _crop(PreprocessConfig()) == "crop to the body"
    assert _crop(PreprocessConfig(crop_to="lungs", lung_margin=0.1)).startswith("crop to the lungs' box")
    assert "0.1 of its longer side" in _crop(PreprocessConfig(crop_to="lungs", lung_margin=0.1))
    assert _crop(PreprocessConfig(crop_foreground=False, crop_to="lungs")) == "no crop"


def test_card_names_how_the_crop_is_resized():
    from lungct.config import PreprocessConfig
    from training.model_card import _resize

    assert _resize(PreprocessConfig()) == "resize keeping the aspect ratio onto a black 96x96 square"
    assert _resize(PreprocessConfig(size=64, keep_aspect=False)) == "stretch to a 64x64 square (aspect ratio not kept)"


def test_card_says_how_the_members_were_stopped(shipped_tag):
    from lungct.store import read_info

    info, _, _ = read_info(shipped_tag)
    assert model_card._stopping(info) == ("all 200 epochs trained, as in cross-validation (no early stopping)", "")
    stopped = info.model_copy(update={"train": info.train.model_copy(update={"patience": 25})})
    text, caveat = model_card._stopping(stopped)
    assert "patience 25, from epoch 100" in text and "chose each member's stopping epoch" in caveat
