import numpy as np
import pytest

from lungct.dataset import DatasetError, duplicate_groups, grouped_folds, list_samples, resolve_split


def test_exact_and_near_duplicates_share_a_group():
    rng = np.random.default_rng(0)
    base = rng.random((5, 2, 16, 16)).astype(np.float32)
    near = base[:1] + 0.01                                     # 5: near copy of 0 in both views
    reframed = np.stack([rng.random((16, 16)), base[1, 1]])[None].astype(np.float32)  # 6: copy of 1 in the second view only
    thumbs = np.concatenate([base, near, reframed])
    digests = ["a", "b", "c", "a", "d", "e", "f"]             # 3: exact copy of 0 (by bytes)
    groups = duplicate_groups(digests, thumbs)
    assert groups[0] == groups[3] == groups[5]
    assert groups[1] == groups[6]
    assert len({groups[1], groups[2], groups[4], groups[0]}) == 4


def test_enclosed_keeps_air_inside_the_body_only():
    from lungct.preprocess import enclosed, otsu_threshold

    air = np.ones((40, 40), dtype=bool)
    air[5:35, 5:35] = False                                   # body
    air[12:28, 10:18] = air[12:28, 22:30] = True              # two lungs
    lungs = enclosed(air)
    assert lungs.sum() == 2 * 16 * 8 and lungs[12:28, 10:18].all() and not lungs[0].any()
    values = np.concatenate([np.full(100, 0.1), np.full(100, 0.8)])
    assert 0.1 < otsu_threshold(values) < 0.8


def test_lung_view_of_blank_and_tiny_slices():
    from training.data import lung_view, thumbnail

    for image in (np.zeros((5, 7), np.float32), np.ones((300, 200), np.float32), np.eye(3, dtype=np.float32)):
        assert lung_view(image).shape == (16, 16)
        assert thumbnail(image).shape == (2, 16, 16)


def test_folds_never_split_a_group():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 40, 300)
    labels = rng.integers(0, 4, 300)
    folds = grouped_folds(groups, labels, 5, seed=0)
    for g in np.unique(groups):
        assert len(set(folds[groups == g])) == 1
    assert set(folds) == set(range(5))


def test_kaggle_duplicates_stay_in_one_fold(tmp_path):
    from lungct.config import PreprocessConfig
    from tests.conftest import KAGGLE
    from training.data import concat, load_set

    if not KAGGLE.is_dir():
        pytest.skip("../shared dataset not present")
    config = PreprocessConfig(size=32)
    data = concat(load_set(list_samples(KAGGLE / "train"), config), load_set(list_samples(KAGGLE / "valid"), config))
    folds = grouped_folds(data.groups(), data.labels, 5, seed=1337)
    by_digest: dict[str, set[int]] = {}
    for digest, fold in zip(data.digests, folds):
        by_digest.setdefault(digest, set()).add(int(fold))
    assert all(len(f) == 1 for f in by_digest.values()), "a byte-identical file is split across folds"
    names = {s.path.name: i for i, s in enumerate(data.samples)}
    assert folds[names["l4.png"]] == folds[names["sq2.png"]]
    groups = data.groups()
    for copies in (("13 (2).png", "13.png"), ("6 (2).png", "6 - Copy (2).png"), ("ad14.png", "ad4.png")):
        assert groups[names[copies[0]]] == groups[names[copies[1]]], f"re-cropped copies {copies} are not grouped"


def test_folds_do_not_depend_on_the_runs_preprocessing():
    """Study runs with another input size or intensity normalisation are scored on the same folds."""
    from lungct.config import PreprocessConfig
    from tests.conftest import KAGGLE
    from training.data import load_set

    if not KAGGLE.is_dir():
        pytest.skip("../shared dataset not present")
    samples = list_samples(KAGGLE / "train")
    folds = [grouped_folds(data.groups(), data.labels, 5, seed=1337) for data in (
        load_set(samples, PreprocessConfig(size=32)), load_set(samples, PreprocessConfig(size=48, intensity="equalize")))]
    np.testing.assert_array_equal(*folds)


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="no class folders"):
        list_samples(tmp_path)
    (tmp_path / "dogs").mkdir()
    with pytest.raises(ValueError, match="'dogs'"):
        list_samples(tmp_path)
    with pytest.raises(DatasetError, match="no split folder"):
        resolve_split(tmp_path, "train")
