"""A tiny real training run into a temporary BentoML store, loaded back, and the evaluator's JSON."""

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lungct.config import PreprocessConfig
from lungct.dataset import grouped_folds
from lungct.labels import CLASSES
from lungct.metrics import cv_summary
from lungct.predictor import Predictor
from lungct.preprocess import load_file
from training import ensemble_cv, evaluate, fold_leak, train


@pytest.fixture(scope="module")
def tiny_run(samples_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    code = train.main(["--data", str(samples_dir), "--epochs", "1", "--width", "16", "--stages", "2",
                       "--size", "64", "--batch-size", "4", "--runs", str(runs)])
    assert code == 0
    return runs


def test_training_saves_model_with_metadata_and_run_folder(tiny_run):
    import bentoml

    stored = bentoml.models.get("lungct:latest")
    meta = stored.info.metadata
    assert meta["classes"] == ["adenocarcinoma", "large.cell.carcinoma", "normal", "squamous.cell.carcinoma"]
    assert meta["preprocess"]["size"] == 64
    assert meta["train"]["epochs"] == 1 and meta["model"]["width"] == 16
    assert len(meta["data_fingerprint"]) == 64
    assert "valid" in meta["metrics"] and "accuracy" in meta["metrics"]["valid"]
    assert set(meta["versions"]) == {"keras", "tensorflow"}
    run = next(tiny_run.iterdir())
    assert {p.name for p in run.iterdir()} >= {"curves.png", "confusion_valid.png", "reliability_valid.png", "metrics.json"}
    assert json.loads((run / "metrics.json").read_text())["valid"]["n"] > 0


def test_loaded_model_predicts_identically(tiny_run, sample_files):
    import bentoml
    import keras

    predictor = Predictor.from_store("lungct:latest")
    assert predictor.info.preprocess.size == 64, "preprocessing is re-read from the stored metadata"
    batch = np.stack([load_file(p, predictor.info.preprocess) for p in sample_files])
    direct = keras.saving.load_model(bentoml.models.get("lungct:latest").path_of("model.keras"), compile=False)
    assert np.array_equal(predictor.logits(batch), direct.predict(batch, verbose=0))
    again = Predictor.from_store(predictor.tag)
    assert np.array_equal(predictor.probabilities(batch), again.probabilities(batch))


def test_corrupt_file_is_skipped_and_counted(samples_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(samples_dir, data)
    (data / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    code = train.main(["--data", str(data), "--epochs", "1", "--width", "16", "--stages", "1", "--size", "32",
                       "--runs", str(tmp_path / "runs"), "--no-save"])
    assert code == 0
    assert "skipped 1" in capsys.readouterr().out


def test_empty_class_folder_is_a_clear_error(samples_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(samples_dir, data)
    for f in (data / "normal").iterdir():
        f.unlink()
    with pytest.raises(SystemExit, match="class folder .*normal holds no images"):
        train.main(["--data", str(data), "--epochs", "1", "--no-save"])


def test_evaluate_json(shipped_tag, eval_dir, tmp_path):
    out = tmp_path / "metrics.json"
    assert evaluate.main(["--data", str(eval_dir), "--model", shipped_tag, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "n", "model"} <= set(report)
    assert report["model"] == shipped_tag
    assert report["n"] == sum(row["support"] for row in report["per_class"].values())
    assert np.array(report["confusion_matrix"]).sum() == report["n"]
    assert 0.0 <= report["macro_f1"] <= 1.0


def test_evaluate_kaggle_root_with_split(shipped_tag, eval_dir, tmp_path):
    root = tmp_path / "Data"
    shutil.copytree(eval_dir, root / "test")
    assert evaluate.main(["--data", str(tmp_path), "--split", "test", "--model", shipped_tag]) == 0
    with pytest.raises(SystemExit, match="no split folder 'nope'"):
        evaluate.main(["--data", str(tmp_path), "--split", "nope", "--model", shipped_tag])


def test_grouped_cross_validation_reports_mean_and_spread(samples_dir, tmp_path, capsys):
    command = ["--data", str(samples_dir), "--cv", "2", "--epochs", "1", "--width", "16", "--stages", "1",
               "--size", "32", "--runs", str(tmp_path), "--no-save", "--scan-radius", "0.5", "--scan-cap", "3"]
    assert train.main(command) == 0
    out = capsys.readouterr().out
    assert "2-fold grouped CV: accuracy" in out and "±" in out
    metrics = json.loads(next(tmp_path.glob("*/metrics.json")).read_text())
    cv = metrics["cv"]
    assert cv["k"] == 2 and len(cv["folds"]) == 2
    assert sum(f["n"] for f in cv["folds"]) == 8
    assert cv["accuracy_std"] == pytest.approx(np.std([f["accuracy"] for f in cv["folds"]]))
    oof = np.load(next(tmp_path.glob("*/oof.npz")))
    data = train.concat(*train.load_splits(samples_dir, PreprocessConfig(size=32), 1337))
    scans = data.groups(0.5, 3)
    assert len(np.unique(scans)) < len(np.unique(data.groups())), "the scan radius joined no slices: a weak test"
    np.testing.assert_array_equal(oof["folds"], grouped_folds(scans, data.labels, 2, 1337))
    assert cv["recipe"]["train"]["scan_radius"] == 0.5
    for fold, summary in enumerate(cv["folds"]):
        held = oof["folds"] == fold
        hits = oof["logits"][held].argmax(1) == oof["labels"][held]
        for index, name in enumerate(CLASSES):
            of_class = oof["labels"][held] == index
            if of_class.any():
                assert summary["recall"][name] == pytest.approx(hits[of_class].mean())


def test_cross_validation_with_fewer_groups_than_folds_is_a_clear_error(samples_dir, tmp_path):
    with pytest.raises(SystemExit, match="2 folds need at least 2 groups of slices; the data has 1"):
        train.main(["--data", str(samples_dir), "--cv", "2", "--epochs", "1", "--size", "32", "--runs", str(tmp_path),
                    "--no-save", "--scan-radius", "0.99", "--scan-cap", "100"])
    assert not list(tmp_path.iterdir())


def test_cv_only_runs_with_other_seeds_share_folds_and_ensemble(samples_dir, tmp_path, capsys):
    runs = []
    study = ["--mixup", "0.2", "--augment-strength", "1.5", "--cutmix", "1.0", "--ema", "0.9", "--blur", "1.5",
             "--gamma", "0.3", "--no-augment"]
    for seed, extra in ((1, []), (2, study)):
        out_dir = tmp_path / f"seed{seed}"
        assert train.main(["--data", str(samples_dir), "--cv", "2", "--cv-only", "--epochs", "1", "--width", "16",
                           "--stages", "1", "--size", "32", "--seed", str(seed), "--runs", str(out_dir), *extra]) == 0
        runs.append(next(out_dir.iterdir()))
        assert "cross-validation only" in capsys.readouterr().out
        assert not (runs[-1] / "curves.png").exists()  # no final fit
    recipe = json.loads((runs[1] / "metrics.json").read_text())["cv"]["recipe"]["train"]
    assert (recipe["mixup"], recipe["augment_strength"], recipe["cutmix"], recipe["ema"], recipe["blur"],
            recipe["gamma"], recipe["augment"]) == (0.2, 1.5, 1.0, 0.9, 1.5, 0.3, False)
    report = ensemble_cv.ensemble_report(runs)
    assert set(report) == {str(runs[0]), str(runs[1]), "ensemble"}
    assert 0 <= report["ensemble"]["accuracy_mean"] <= 1
    np.testing.assert_array_equal(np.load(runs[0] / "oof.npz")["folds"], np.load(runs[1] / "oof.npz")["folds"])
    oof = np.load(runs[0] / "oof.npz")
    assert oof["mirrored_logits"].shape == oof["logits"].shape
    assert not np.allclose(oof["mirrored_logits"], oof["logits"])  # the mirrored slices were predicted, not copied
    mirrored = ensemble_cv.ensemble_report(runs, mirror=True)[str(runs[0])]
    assert mirrored == cv_summary((oof["logits"] + oof["mirrored_logits"]) / 2, oof["labels"], oof["folds"])
    assert fold_leak.main([*map(str, runs), "--data", str(samples_dir)]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    groups = report["groups"]
    assert groups["all"]["n"] == len(oof["labels"]) and groups["all"]["leaked"] == 0  # today's folds keep groups whole
    assert sum(band["n"] for band in report["distance"]) == len(oof["labels"])
    assert report["distance"][0]["n"] == 0  # no slice had a near duplicate (distance < 0.03) in its training folds
    assert sum(row["n"] for row in report["series"]) == len(oof["labels"])
    fewer = tmp_path / "fewer"
    shutil.copytree(samples_dir, fewer)
    next(fewer.glob("normal/*")).unlink()
    with pytest.raises(SystemExit, match="not the data"):
        fold_leak.main([str(runs[0]), "--data", str(fewer)])


def test_fold_leak_finds_groups_split_across_folds():
    groups, folds = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 0, 1])
    np.testing.assert_array_equal(fold_leak.leaked(groups, folds), [True, True, False, False, False])
    labels, predicted = np.array([2, 2, 0, 0, 0]), np.array([2, 0, 0, 1, 0])
    report = fold_leak.leak_report(groups, folds, labels, predicted)
    assert report["all"] == {"n": 5, "leaked": 2, "accuracy_leaked": 0.5, "accuracy_rest": 2 / 3}
    assert report["normal"]["accuracy_rest"] is None and report["adenocarcinoma"]["leaked"] == 0


def test_distance_to_the_training_folds_and_accuracy_by_band():
    thumbs = np.zeros((5, 2, 4, 4), np.float32)
    thumbs[1, 0] = 0.02          # 1: 0.02 from 0 in the first view (its second view is 0 apart)
    thumbs[2] = 0.5              # 2: 0.5 from 0 and 1, 0.4 from 3
    thumbs[3] = 0.1              # 3: 0.08 from 1 in the first view
    thumbs[4] = 0.1              # 4: a copy of 3 in the same fold
    folds = np.array([0, 1, 1, 0, 0])
    distance = fold_leak.nearest_other_fold(thumbs, folds)
    np.testing.assert_allclose(distance, [0.0, 0.0, 0.4, 0.08, 0.08])  # 3 and 4: not each other (one fold), 1
    labels, predicted = np.array([0, 2, 3, 1, 1]), np.array([0, 2, 0, 1, 0])
    bands = fold_leak.distance_report(distance, labels, predicted, [0.05, 0.2])
    assert [(b["low"], b["high"], b["n"], b["accuracy"]) for b in bands] == [(0.0, 0.05, 2, 1.0), (0.05, 0.2, 2, 0.5), (0.2, None, 1, 0.0)]
    assert [(b["n_tumour"], b["accuracy_tumour"]) for b in bands] == [(1, 1.0), (2, 0.5), (1, 0.0)]  # slice 1 is normal


def test_series_of_file_names_and_their_accuracy_and_brightness():
    from training.data import series_of

    series = series_of(["000108 (3).png", "12 - Copy.png", "ad12.png", "sq3.png"])
    np.testing.assert_array_equal(series, ["numbered", "numbered", "other", "other"])
    images = np.zeros((4, 4, 4, 1), np.float32)
    images[:2, :2] = 0.6          # numbered slices: body at 0.6 (the rest is background, left out)
    images[2:, :2] = 0.9          # other names: body at 0.9
    labels, predicted = np.array([0, 0, 0, 3]), np.array([0, 2, 2, 3])
    rows = fold_leak.series_report(series, labels, predicted, images)
    assert [(r["series"], r["class"], r["n"], r["accuracy"], r["called_normal"]) for r in rows] == [
        ("numbered", "adenocarcinoma", 2, 0.5, 1), ("other", "adenocarcinoma", 1, 0.0, 1),
        ("other", "squamous.cell.carcinoma", 1, 1.0, 0)]
    assert [round(r["body_p90"], 4) for r in rows] == [0.6, 0.9, 0.9]


def test_ensemble_refuses_runs_on_other_folds(tmp_path):
    runs = []
    for name, folds in (("a", [0, 0, 1, 1]), ("b", [0, 1, 0, 1])):
        (tmp_path / name).mkdir()
        np.savez(tmp_path / name / "oof.npz", logits=np.zeros((4, 4)), labels=np.arange(4), folds=np.array(folds),
                 digests=np.array(["w", "x", "y", "z"]))
        runs.append(tmp_path / name)
    with pytest.raises(SystemExit, match="other folds"):
        ensemble_cv.ensemble_report(runs)
    with pytest.raises(SystemExit, match="no mirrored logits"):
        ensemble_cv.ensemble_report(runs[:1], mirror=True)
    with pytest.raises(SystemExit, match="oof.npz not found"):
        ensemble_cv.ensemble_report([tmp_path])


def test_mixup_blends_images_and_labels_with_the_same_weight():
    import tensorflow as tf

    from training.data import mixup

    images = tf.constant(np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((4, 2, 2, 1), np.float32))
    labels = tf.constant(np.eye(4, dtype=np.float32))
    mixed, soft = (t.numpy() for t in mixup(images, labels, 0.4))
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)
    # label weights say how much of each original image each mixed image holds
    np.testing.assert_allclose(mixed[:, 0, 0, 0], soft @ np.arange(4, dtype=np.float32), rtol=1e-5)


def test_cutmix_pastes_one_box_and_labels_by_area():
    import tensorflow as tf

    from training.data import cutmix

    tf.random.set_seed(3)
    images = tf.constant(np.arange(8, dtype=np.float32)[:, None, None, None] * np.ones((8, 16, 16, 1), np.float32))
    labels = tf.constant(np.eye(8, dtype=np.float32)[:, :4] + np.eye(8, 4, -4, dtype=np.float32))
    mixed, soft = (t.numpy() for t in cutmix(images, labels, 1.0))
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)
    for image, own in zip(mixed[..., 0], range(8)):
        values = set(np.unique(image)) - {float(own)}
        assert len(values) <= 1, "at most one other image is pasted in"
        foreign = image != own
        if foreign.any():  # the pasted pixels form one axis-aligned box
            rows, cols = np.flatnonzero(foreign.any(1)), np.flatnonzero(foreign.any(0))
            assert foreign[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
    kept = np.array([(m[..., 0] == i).mean() for i, m in enumerate(mixed)])
    np.testing.assert_allclose(soft[np.arange(8), np.arange(8) % 4] >= kept - 1e-6, True)


def test_sample_weights_balance_classes_and_count_a_scans_neighbouring_slices_about_once():
    from training.data import sample_weights

    rng = np.random.default_rng(0)
    scan = rng.random((1, 2, 8, 8)).astype(np.float32)
    neighbours = scan + rng.normal(0, 0.005, (4, 2, 8, 8)).astype(np.float32)  # 4 slices of one scan
    thumbnails = np.concatenate([neighbours, rng.random((3, 2, 8, 8)).astype(np.float32)])  # 3 scans seen once
    labels = np.array([0, 0, 0, 0, 0, 2, 2])

    plain = sample_weights(labels, thumbnails)
    np.testing.assert_allclose(plain, [7 / (4 * 5)] * 5 + [7 / (4 * 2)] * 2, rtol=1e-6)  # N / (classes * count)

    dense = sample_weights(labels, thumbnails, density_radius=0.05)
    for weights in (plain, dense):  # every class weighs the same in total
        np.testing.assert_allclose(weights[labels == 0].sum(), weights[labels == 2].sum(), rtol=1e-6)
    np.testing.assert_allclose(dense[:4], dense[0])
    np.testing.assert_allclose(dense[:4].sum(), dense[4], rtol=1e-6)  # the scan's 4 slices weigh as much as 1
    np.testing.assert_allclose(dense[5:], plain[5:], rtol=1e-6)


def test_series_balance_gives_each_file_series_of_a_class_the_same_total_weight():
    from training.data import sample_weights, series_of

    names = ["000108 (3).png", "000109.png", "000110.png", "ad1.png", "12 - Copy.png", "n1.png"]
    series = series_of(names)
    assert list(series) == ["numbered"] * 3 + ["other", "numbered", "other"]
    labels = np.array([0, 0, 0, 0, 2, 2])
    thumbnails = np.zeros((6, 2, 8, 8), np.float32)

    plain = sample_weights(labels, thumbnails, series=series)
    np.testing.assert_allclose(plain, sample_weights(labels, thumbnails))  # balance 0: series do not matter
    full = sample_weights(labels, thumbnails, series=series, series_balance=1.0)
    np.testing.assert_allclose(full[:3].sum(), full[3], rtol=1e-6)  # 3 numbered weigh as much as 1 other
    np.testing.assert_allclose(full[labels == 0].sum(), full[labels == 2].sum(), rtol=1e-6)
    half = sample_weights(labels, thumbnails, series=series, series_balance=0.5)
    np.testing.assert_allclose(half[3] / half[0], np.sqrt(3), rtol=1e-6)
    np.testing.assert_allclose(half.sum(), plain.sum(), rtol=1e-6)  # the same total as without


def test_training_batches_carry_the_loss_weights():
    from lungct.config import TrainConfig
    from training.data import make_dataset

    images = np.arange(6, dtype=np.float32)[:, None, None, None] * np.ones((6, 4, 4, 1), np.float32)
    weights = np.linspace(0.5, 3.0, 6).astype(np.float32)
    recipe = TrainConfig(augment=False, mixup=0.2)
    [(x, y, w)] = list(make_dataset(images, np.arange(6) % 4, 6, recipe, weights))
    assert x.shape[0] == y.shape[0] == 6
    np.testing.assert_allclose(np.sort(w.numpy()), weights)  # each slice's own weight, through mixup


def test_study_options_train_save_and_load_back(samples_dir, tmp_path, monkeypatch):
    import keras

    stoppers = []
    monkeypatch.setattr(keras.callbacks, "EarlyStopping", lambda **kw: stoppers.append(kw) or keras.callbacks.Callback())
    assert train.main(["--data", str(samples_dir), "--epochs", "2", "--width", "16", "--stages", "1", "--size", "32",
                       "--batch-size", "4", "--ema", "0.5", "--intensity", "equalize", "--stochastic-depth", "0.2",
                       "--density-radius", "0.05", "--saturate", "0.2", "--series-balance", "0.5",
                       "--runs", str(tmp_path)]) == 0
    assert stoppers == [], "with EMA the averaged weights are the model: no early stopping"
    predictor = Predictor.from_store("lungct:latest")  # a model with StochasticDepth layers loads back
    info = predictor.info
    assert (info.train.ema, info.preprocess.intensity, info.model.stochastic_depth, info.train.density_radius,
            info.train.saturate, info.train.series_balance) == (0.5, "equalize", 0.2, 0.05, 0.2, 0.5)


def test_ensemble_training_saves_one_model_that_serves_and_explains(samples_dir, tmp_path, sample_files):
    from lungct.explain import grad_cam
    from lungct.model import ensemble_members

    assert train.main(["--data", str(samples_dir), "--epochs", "1", "--width", "16", "--stages", "2", "--size", "32",
                       "--batch-size", "4", "--ensemble", "2", "--runs", str(tmp_path)]) == 0
    predictor = Predictor.from_store("lungct:latest")
    assert predictor.info.model.ensemble == 2
    members = ensemble_members(predictor.model)
    assert len(members) == 2
    batch = np.stack([load_file(p, predictor.info.preprocess) for p in sample_files])
    mean = np.mean([m.predict(batch, verbose=0) for m in members], axis=0)
    np.testing.assert_allclose(predictor.logits(batch), mean, rtol=1e-4, atol=1e-5)
    assert not np.allclose(members[0].predict(batch, verbose=0), members[1].predict(batch, verbose=0))  # two seeds
    _, cam = grad_cam(predictor.model, batch[0])
    assert cam.shape == (32, 32) and 0 <= cam.min() and cam.max() <= 1


def test_swa_model_is_the_mean_of_the_averaged_epochs_weights():
    import keras

    from lungct.config import ModelConfig
    from lungct.model import build_model

    model = build_model(ModelConfig(width=8, stages=1, dropout=0.0), 16)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    images, labels = rng.random((16, 16, 16, 1), dtype=np.float32), np.eye(4, dtype=np.float32)[np.arange(16) % 4]
    snapshots = []
    recorder = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: snapshots.append([v.numpy().copy() for v in model.trainable_weights]))
    model.fit(images, labels, batch_size=4, epochs=5, callbacks=[recorder, train.WeightAverage(2)], verbose=0)
    for variable, *epochs in zip(model.trainable_weights, *snapshots):
        np.testing.assert_allclose(variable.numpy(), np.mean(epochs[2:], axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(model.trainable_weights[0].numpy(), snapshots[-1][0])  # the mean, not the last epoch


def test_swa_trains_its_last_epochs_at_the_constant_rate():
    from lungct.config import TrainConfig

    def per_epoch(**recipe):
        schedule = train.learning_rate_schedule(TrainConfig(epochs=8, warmup_epochs=2, **recipe), steps_per_epoch=5)
        return np.array([float(schedule(5 * epoch)) for epoch in range(9)])  # as each epoch begins, and at the end

    swa, plain = per_epoch(swa_epochs=3, swa_lr=1e-4), per_epoch()
    np.testing.assert_allclose(swa[:3], plain[:3], rtol=1e-6)  # same warm-up to the peak
    np.testing.assert_allclose(swa[5:], 1e-4, rtol=1e-5)  # decayed by the first averaged epoch, then held
    assert np.all(np.diff(swa[2:6]) < 0) and plain[-1] == 0  # without SWA: down to zero


def test_swa_saves_its_recipe_and_never_stops_early(samples_dir, tmp_path, monkeypatch):
    import keras

    stoppers = []
    monkeypatch.setattr(keras.callbacks, "EarlyStopping", lambda **kw: stoppers.append(kw) or keras.callbacks.Callback())
    assert train.main(["--data", str(samples_dir), "--epochs", "4", "--warmup-epochs", "1", "--swa-epochs", "2",
                       "--patience", "2", "--width", "8", "--stages", "1", "--size", "32",
                       "--batch-size", "4", "--ensemble", "1", "--runs", str(tmp_path)]) == 0
    assert stoppers == [], "with SWA the averaged weights are the model: no early stopping"
    assert Predictor.from_store("lungct:latest").info.train.swa_epochs == 2


@pytest.mark.parametrize("flags, message", [(["--swa-epochs", "5"], "at least one epoch of cosine decay"),
                                            (["--swa-epochs", "2", "--ema", "0.9"], "one weight average"),
                                            (["--epochs", "0"], "epochs")])
def test_inconsistent_recipe_is_a_clear_error(samples_dir, tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message):
        train.main(["--data", str(samples_dir), "--epochs", "6", "--warmup-epochs", "1", *flags, "--runs", str(tmp_path)])


def test_batch_norm_recalibration_matches_the_weights_statistics():
    """After weight averaging the moving statistics are stale; recalibration makes inference agree with
    batch statistics over the same images."""
    import keras

    from lungct.config import ModelConfig
    from lungct.model import build_model

    model = build_model(ModelConfig(width=16, stages=2, dropout=0.0), 16)
    images = np.random.default_rng(0).random((40, 16, 16, 1), dtype=np.float32)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(layer.moving_mean + 5.0)
    population = np.asarray(model(images, training=True))
    assert not np.allclose(np.asarray(model(images, training=False)), population, atol=1e-2)
    train.recalibrate_batch_norm(model, images, batch_size=40, passes=200)
    np.testing.assert_allclose(np.asarray(model(images, training=False)), population, atol=1e-3)


def test_appearance_blurs_curves_and_saturates_each_slice_by_its_own_amount():
    import tensorflow as tf

    from training.data import appearance

    tf.random.set_seed(5)
    edge = np.zeros((16, 32, 32, 1), np.float32)
    edge[:, :, 16:] = 0.8
    blurred = appearance(tf.constant(edge), 2.0, 0.0).numpy()
    assert blurred.shape == edge.shape
    profile = blurred[:, 16, 8:24, 0]
    assert np.all(np.diff(profile, axis=1) >= -1e-6), "an edge stays monotonic"
    np.testing.assert_allclose(profile.sum(1), edge[:, 16, 8:24, 0].sum(1), atol=1e-4)  # blur keeps mass
    widths = ((profile > 0.01) & (profile < 0.79)).sum(1)
    assert widths.min() < widths.max(), "slices of one batch are blurred by different amounts"
    ramp = np.linspace(0, 1, 32, dtype=np.float32)[None, None, :, None] * np.ones((16, 32, 1, 1), np.float32)
    curved = appearance(tf.constant(ramp), 0.0, 0.5).numpy()
    assert np.all(np.diff(curved[:, 0, :, 0], axis=1) >= 0), "a gamma curve keeps the order of intensities"
    np.testing.assert_allclose(curved[:, :, [0, -1]], ramp[:, :, [0, -1]], atol=1e-6)  # black and white stay
    exponents = np.log(curved[:, 0, 16, 0]) / np.log(ramp[0, 0, 16, 0])
    assert np.exp(-0.5) - 1e-4 <= exponents.min() < exponents.max() <= np.exp(0.5) + 1e-4
    saturated = appearance(tf.constant(ramp), 0.0, 0.0, 0.3).numpy()[:, 0, :, 0]
    white = ramp[0, 0, 8, 0] / saturated[:, 8]  # each slice's own white level
    assert 0.7 - 1e-4 <= white.min() < white.max() <= 1.0 + 1e-4
    np.testing.assert_allclose(saturated, np.minimum(ramp[:, 0, :, 0] / white[:, None], 1.0), atol=1e-5)


def test_stopped_cross_validation_resumes_at_its_first_unfinished_fold(samples_dir, tmp_path, monkeypatch, capsys):
    command = ["--data", str(samples_dir), "--cv", "2", "--cv-only", "--epochs", "1", "--width", "16", "--stages", "1",
               "--size", "32", "--runs", str(tmp_path)]
    real_fit, calls = train.fit, []

    def fit_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is stopped while training its second fold
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train, "fit", fit_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train.main(command)
    run = next(tmp_path.iterdir())
    stopped = dict(np.load(run / "oof.npz"))
    assert stopped["done"].tolist() == [True, False] and not (run / "metrics.json").exists()
    with pytest.raises(SystemExit, match="unfinished folds"):
        ensemble_cv.ensemble_report([run])
    partial = ensemble_cv.ensemble_report([run], finished_folds=True)["ensemble"]
    with pytest.raises(SystemExit, match="calibration out of fold needs at least two folds"):
        ensemble_cv.main([str(run), "--finished-folds", "--calibrate"])  # one finished fold: no other to fit on
    unstarted = tmp_path / "unstarted"  # a run stopped in its first fold
    unstarted.mkdir()
    np.savez(unstarted / "oof.npz", **{**stopped, "done": np.zeros(2, bool)})
    with pytest.raises(SystemExit, match="no fold is finished by every run"):
        ensemble_cv.ensemble_report([run, unstarted], finished_folds=True)
    with pytest.raises(SystemExit, match="another recipe"):
        train.main([*command, "--resume", str(run), "--epochs", "2"])
    capsys.readouterr()
    assert train.main([*command, "--resume", str(run)]) == 0
    assert len(calls) == 3  # only the second fold was trained again
    assert "fold 1/2: done in an earlier run" in capsys.readouterr().out
    resumed = np.load(run / "oof.npz")
    first = stopped["folds"] == 0
    np.testing.assert_array_equal(resumed["logits"][first], stopped["logits"][first])
    assert resumed["done"].all() and np.abs(resumed["logits"][~first]).sum() > 0
    metrics = json.loads((run / "metrics.json").read_text())["cv"]
    assert metrics["k"] == 2 and metrics["recipe"]["train"]["epochs"] == 1
    assert ensemble_cv.ensemble_report([run])[str(run)] == {k: v for k, v in metrics.items() if k not in ("seconds", "recipe")}
    assert partial["k"] == 1 and partial["folds"] == metrics["folds"][:1]  # the finished fold, scored before the resume
    assert ensemble_cv.ensemble_report([run], finished_folds=True)["ensemble"]["k"] == 2
    with pytest.raises(SystemExit, match="needs --cv"):
        train.main(["--data", str(samples_dir), "--resume", str(tmp_path / "nothing")])


@pytest.mark.parametrize("patience", [0, 3])
def test_members_train_all_epochs_unless_given_a_patience(samples_dir, tmp_path, monkeypatch, capfd, patience):
    """The recipe trains every epoch, as its cross-validation runs do; `--patience N` stops on valid accuracy."""
    import keras

    stoppers, real = [], keras.callbacks.EarlyStopping
    monkeypatch.setattr(keras.callbacks, "EarlyStopping", lambda **kw: stoppers.append(kw) or real(**kw))
    assert train.main(["--data", str(samples_dir), "--epochs", "4", "--width", "8", "--stages", "1", "--size", "32",
                       "--batch-size", "4", "--ensemble", "1", "--patience", str(patience), "--no-save",
                       "--runs", str(tmp_path)]) == 0
    if patience:
        assert [(s["patience"], s["start_from_epoch"], s["restore_best_weights"]) for s in stoppers] == [(3, 2, True)]
    else:
        assert stoppers == [], "no early stopping in the recipe"
        assert "Epoch 4/4" in capfd.readouterr().out


def test_cv_folds_are_those_of_the_committed_runs_whatever_the_input_size():
    """Folds come from a fixed framing: a 64-pixel run gets the folds the shipped members were scored on."""
    from lungct.config import PreprocessConfig
    from lungct.dataset import grouped_folds
    from lungct.store import SHIPPED_DIR
    from tests.conftest import KAGGLE

    if not KAGGLE.is_dir():
        pytest.skip("needs the Kaggle data in ../shared")
    data = train.concat(*train.load_splits(KAGGLE, PreprocessConfig(size=64), 1337))
    with np.load(SHIPPED_DIR / "cv" / "seed1337" / "oof.npz") as committed:
        assert list(committed["digests"]) == data.digests
        np.testing.assert_array_equal(grouped_folds(data.groups(), data.labels, 5, 1337), committed["folds"])
    with np.load(SHIPPED_DIR / "cv-scan" / "seed1337" / "oof.npz") as committed:
        np.testing.assert_array_equal(grouped_folds(data.groups(0.05, 25), data.labels, 5, 1337), committed["folds"])


def test_ensemble_cv_prints_the_committed_members_pooled_accuracy(capsys):
    """The pooled figure is the share of out-of-fold slices the averaged logits get right."""
    from lungct.store import SHIPPED_DIR

    runs = sorted((SHIPPED_DIR / "cv").iterdir())
    assert ensemble_cv.main([str(run) for run in runs]) == 0
    oofs = [np.load(run / "oof.npz") for run in runs]
    right = np.mean([oof["logits"] for oof in oofs], axis=0).argmax(1) == oofs[0]["labels"]
    assert f"ensemble accuracy pooled over 5 folds: {right.mean():.4f}" in capsys.readouterr().out


def test_ensemble_cv_subsets_score_every_ensemble_of_k_runs(capsys):
    """Each subset scores as that ensemble alone does; the spread is over those scores."""
    from lungct.store import SHIPPED_DIR

    runs = sorted((SHIPPED_DIR / "cv").iterdir())
    pairs = ensemble_cv.subsets_report(runs, 2)
    assert [subset["runs"] for subset in pairs["subsets"]] == [[str(a), str(b)] for a, b in itertools.combinations(runs, 2)]
    alone = [ensemble_cv.ensemble_report([Path(r) for r in subset["runs"]])["ensemble"] for subset in pairs["subsets"]]
    assert [{k: v for k, v in s.items() if k != "runs"} for s in pairs["subsets"]] == alone
    accuracies = [score["accuracy_mean"] for score in alone]
    assert (pairs["accuracy_min"], pairs["accuracy_max"]) == (min(accuracies), max(accuracies))
    assert pairs["accuracy_mean"] == pytest.approx(np.mean(accuracies))
    assert ensemble_cv.subsets_report(runs, 3)["subsets"][0]["accuracy_mean"] == ensemble_cv.ensemble_report(runs)["ensemble"]["accuracy_mean"]
    assert ensemble_cv.main(["--subsets", "2", *map(str, runs)]) == 0
    assert f"2-member ensembles (3): accuracy {np.mean(accuracies):.4f} on average" in capsys.readouterr().out
    for size in (0, 4):
        with pytest.raises(SystemExit, match="needs between 1 and 3"):
            ensemble_cv.subsets_report(runs, size)


def test_ensemble_cv_calibrate_reproduces_the_shipped_models_calibrated_cv_by_scan(shipped_tag):
    """`--calibrate` scores what training.calibrate reported for the shipped model, from the committed scan runs."""
    from lungct.store import SHIPPED_DIR, read_info

    info, _, _ = read_info(shipped_tag)
    runs = sorted((SHIPPED_DIR / "cv-scan").iterdir())
    calibrated = ensemble_cv.ensemble_report(runs, calibrate=True)["ensemble"]
    raw = ensemble_cv.ensemble_report(runs)["ensemble"]
    cal = info.metrics["calibration"]
    assert calibrated["accuracy_mean"] == pytest.approx(cal["accuracy_oof_after"])
    assert calibrated["macro_f1_mean"] == pytest.approx(cal["macro_f1_oof_after"])
    assert raw["accuracy_mean"] == pytest.approx(cal["accuracy_oof_before"])
    assert calibrated["accuracy_mean"] != raw["accuracy_mean"]
    subsets = ensemble_cv.subsets_report(runs, 3, calibrate=True)
    assert subsets["subsets"][0]["accuracy_mean"] == calibrated["accuracy_mean"]
