import numpy as np
import pytest

from lungct.dataset import (DatasetError, duplicate_groups, grouped_folds, list_samples, resolve_split, scan_groups,
                            view_distances)


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


@pytest.fixture(scope="module")
def kaggle_all():
    """Kaggle train + valid, loaded as training loads them (32-pixel inputs: grouping does not depend on them)."""
    from lungct.config import PreprocessConfig
    from tests.conftest import KAGGLE
    from training.data import concat, load_set

    if not KAGGLE.is_dir():
        pytest.skip("../shared dataset not present")
    config = PreprocessConfig(size=32)
    return concat(load_set(list_samples(KAGGLE / "train"), config), load_set(list_samples(KAGGLE / "valid"), config))


def test_kaggle_duplicates_stay_in_one_fold(kaggle_all):
    data = kaggle_all
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


def _chain(steps: list[float]) -> np.ndarray:
    """Thumbnails (N, 1, 4, 4) of slices each the next of ``steps`` (view distance) from the last, as a scan's
    neighbouring slices are."""
    return np.cumsum([0.0, *steps], dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 4, 4), np.float32)


def test_scan_groups_join_nearest_slices_up_to_the_cap_and_never_split_duplicates():
    # a scan of 6 slices (nearest pairs: 2-3, then 3-4, 0-1, 4-5, 1-2), another of 2 far away
    thumbs = np.concatenate([_chain([0.040, 0.045, 0.030, 0.035, 0.041]), _chain([0.04]) + 5])
    duplicates = np.array([0, 0, 1, 2, 3, 4, 5, 6])                  # slices 0 and 1 are copies
    grown = scan_groups(duplicates, thumbs, radius=0.05, cap=3)
    assert grown[0] == grown[1], "a duplicate group was split"
    assert [list(np.flatnonzero(grown == g)) for g in np.unique(grown)] == [[0, 1], [2, 3, 4], [5], [6, 7]]
    assert len(np.unique(scan_groups(duplicates, thumbs, radius=0.05, cap=8))) == 2
    np.testing.assert_array_equal(scan_groups(duplicates, thumbs, radius=0.03, cap=8), duplicates)
    big_copies = scan_groups(np.zeros(8, int), thumbs, radius=0.05, cap=3)
    assert len(np.unique(big_copies)) == 1, "a duplicate group above the cap must stay whole"


def test_scan_folds_put_a_scans_neighbouring_slices_in_one_fold(kaggle_all):
    """With scan groups, far fewer tumour slices have a look-alike (view distance below 0.05) in the folds
    they are scored against, and duplicates still never straddle folds."""
    data = kaggle_all
    tumour = np.flatnonzero(data.labels != 2)
    distance = np.stack([view_distances(data.thumbnails, i) for i in tumour])

    def near_in_other_folds(folds: np.ndarray) -> int:
        return int(sum((d[folds != folds[i]] < 0.05).any() for d, i in zip(distance, tumour)))

    duplicates = data.groups()
    by_scan = data.groups(0.05, 25)
    assert all(len(set(by_scan[duplicates == g])) == 1 for g in np.unique(duplicates))
    assert np.bincount(by_scan).max() <= 25
    before = near_in_other_folds(grouped_folds(duplicates, data.labels, 5, 1337))
    after = near_in_other_folds(grouped_folds(by_scan, data.labels, 5, 1337))
    assert after < before / 2, (before, after)


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
