import pytest

from lungct.labels import CLASSES, UnknownLabelError, normalise_label


def test_class_order_is_fixed():
    assert CLASSES == ("adenocarcinoma", "large.cell.carcinoma", "normal", "squamous.cell.carcinoma")


@pytest.mark.parametrize(
    "folder, expected",
    [
        ("adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib", "adenocarcinoma"),
        ("large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa", "large.cell.carcinoma"),
        ("squamous.cell.carcinoma_left.hilum_T1_N2_M0_IIIa", "squamous.cell.carcinoma"),
        ("normal", "normal"),
        ("adenocarcinoma", "adenocarcinoma"),
        ("large.cell.carcinoma", "large.cell.carcinoma"),
        ("squamous.cell.carcinoma", "squamous.cell.carcinoma"),
    ],
)
def test_kaggle_long_and_short_names(folder, expected):
    assert normalise_label(folder) == expected


@pytest.mark.parametrize("folder", ["cats", "adeno", "large.cell", "", "squamous"])
def test_unknown_folder_is_a_clear_error(folder):
    with pytest.raises(UnknownLabelError) as info:
        normalise_label(folder)
    assert repr(folder) in str(info.value)
    assert "adenocarcinoma" in str(info.value) and "normal" in str(info.value)
