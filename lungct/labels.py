"""The four classes and the mapping from Kaggle folder names to them."""

from __future__ import annotations

CLASSES: tuple[str, ...] = (
    "adenocarcinoma",
    "large.cell.carcinoma",
    "normal",
    "squamous.cell.carcinoma",
)


class UnknownLabelError(ValueError):
    """A folder name that does not name one of the four classes."""


def normalise_label(folder_name: str) -> str:
    """Map a Kaggle folder name to a class name.

    Accepts the short names of the test split (``adenocarcinoma``) and the long
    train/valid names that append the tumour site and stage
    (``adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib``).
    """
    name = folder_name.strip().lower()
    for cls in CLASSES:
        if name == cls or name.startswith(cls + "_"):
            return cls
    raise UnknownLabelError(
        f"folder {folder_name!r} does not name a class; accepted names are "
        f"{', '.join(CLASSES)} (optionally followed by '_<site and stage>')"
    )
