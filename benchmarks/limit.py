"""The in-process ceiling: decode + preprocess + model call at a fixed batch size, no HTTP, one process.

    python -m benchmarks.limit --model lungct:<version> [--batch-sizes 8 16 32 64] [--images 256]

Prints JSON: images/second for every batch size (decode and preprocessing included, done in
this process one image after the other, then one model call per batch), and the split of the
time between decoding + preprocessing and the model call.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def measure(tag: str, files: list[Path], batch_sizes=(8, 16, 32, 64), images: int = 256, repeats: int = 2) -> dict:
    from lungct.predictor import Predictor
    from lungct.preprocess import load_tensor

    predictor = Predictor.from_store(tag)
    config = predictor.info.preprocess
    payloads = [(Path(f).name, Path(f).read_bytes()) for f in files]
    for batch_size in batch_sizes:  # trace / warm every batch shape once, outside the timing
        predictor.probabilities(np.zeros((batch_size, config.size, config.size, 1), np.float32))

    results = []
    for batch_size in batch_sizes:
        best = None
        for _ in range(repeats):
            decode_s = model_s = 0.0
            done = 0
            while done < images:
                n = min(batch_size, images - done)
                start = time.perf_counter()
                batch = np.stack([load_tensor(data, name, config)
                                  for name, data in (payloads[(done + i) % len(payloads)] for i in range(n))])
                middle = time.perf_counter()
                predictor.probabilities(batch)
                end = time.perf_counter()
                decode_s, model_s, done = decode_s + middle - start, model_s + end - middle, done + n
            run = {"batch_size": batch_size, "images": images, "seconds": round(decode_s + model_s, 3),
                   "images_per_s": round(images / (decode_s + model_s), 2),
                   "decode_preprocess_ms_per_image": round(1000 * decode_s / images, 3),
                   "model_ms_per_image": round(1000 * model_s / images, 3)}
            if best is None or run["images_per_s"] > best["images_per_s"]:
                best = run
        results.append(best)
    top = max(results, key=lambda r: r["images_per_s"])
    return {"tag": predictor.tag, "runs": results, "best_batch_size": top["batch_size"],
            "images_per_s": top["images_per_s"]}


def main(argv: list[str] | None = None) -> None:
    from benchmarks.loadgen import ct_files

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lungct:latest")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--images", type=int, default=256, help="images per timed run")
    parser.add_argument("--files", type=int, default=128, help="distinct CT files to cycle through")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per batch size (best kept)")
    args = parser.parse_args(argv)
    files, _ = ct_files(args.files)
    print(json.dumps(measure(args.model, files, args.batch_sizes, args.images, args.repeats)))


if __name__ == "__main__":
    main()
