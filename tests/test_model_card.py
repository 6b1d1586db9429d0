import re

import numpy as np

from training import model_card


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
