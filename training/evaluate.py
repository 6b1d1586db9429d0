"""`python -m training.evaluate --data DIR [--split NAME] [--model TAG] [--json FILE]`: score a stored model.

DIR is a folder with one sub-folder per class (short or long Kaggle names), or a Kaggle root
with ``--split``. The JSON keys ``accuracy, macro_f1, per_class, confusion_matrix, n, model``
are a stable interface.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from lungct.dataset import DatasetError, list_samples, resolve_split
from lungct.metrics import classification_report, format_report
from lungct.predictor import Predictor
from lungct.store import ModelMissingError
from training.data import load_set


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", default=None, help="split folder inside a Kaggle root (train, valid, test)")
    p.add_argument("--model", default="lungct:latest", help="BentoML model tag")
    p.add_argument("--json", type=Path, default=None, help="write the metrics here as JSON")
    p.add_argument("--batch-size", type=int, default=32)
    return p.parse_args(argv)


def file_logits(predictor: Predictor, data_dir: Path, batch_size: int = 32):
    """(labels, uncalibrated logits, loaded set) for every readable file under data_dir."""
    loaded = load_set(list_samples(data_dir), predictor.info.preprocess)
    chunks = [predictor.logits(loaded.images[i : i + batch_size]) for i in range(0, len(loaded.images), batch_size)]
    return loaded.labels, np.concatenate(chunks), loaded


def predict_files(predictor: Predictor, data_dir: Path, batch_size: int = 32):
    """(labels, calibrated probabilities, loaded set) for every readable file under data_dir."""
    labels, logits, loaded = file_logits(predictor, data_dir, batch_size)
    return labels, predictor.calibrated(logits), loaded


def evaluate(predictor: Predictor, data_dir: Path, batch_size: int = 32) -> dict:
    labels, probabilities, loaded = predict_files(predictor, data_dir, batch_size)
    report = classification_report(labels, probabilities.argmax(axis=1))
    report["model"] = predictor.tag
    report["skipped"] = loaded.skipped
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        predictor = Predictor.from_store(args.model)
        report = evaluate(predictor, resolve_split(args.data, args.split), args.batch_size)
    except (DatasetError, ModelMissingError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(f"model {report['model']}")
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
