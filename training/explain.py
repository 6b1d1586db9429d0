"""`python -m training.explain FILE --out PNG [--model TAG]`: Grad-CAM heat-map over a CT slice, offline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lungct.decode import DecodeError, decode_image
from lungct.explain import grad_cam, overlay_png
from lungct.predictor import Predictor
from lungct.preprocess import preprocess_framed
from lungct.store import ModelMissingError


def explain_file(predictor: Predictor, path: Path) -> tuple[dict, bytes]:
    image = decode_image(Path(path).read_bytes(), str(path))
    tensor, frame = preprocess_framed(image, predictor.info.preprocess)
    logits, cam = grad_cam(predictor.model, tensor)
    probabilities = predictor.calibrated(logits)
    best = int(probabilities.argmax())
    png, _ = overlay_png(image, cam, frame)
    answer = {
        "class": predictor.info.classes[best], "confidence": float(probabilities[best]),
        "probabilities": dict(zip(predictor.info.classes, map(float, probabilities))), "model": predictor.tag,
    }
    return answer, png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("file", type=Path)
    p.add_argument("--out", type=Path, required=True, help="PNG to write: the heat-map over the slice")
    p.add_argument("--model", default="lungct:latest")
    args = p.parse_args(argv)
    try:
        answer, png = explain_file(Predictor.from_store(args.model), args.file)
    except (DecodeError, ModelMissingError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    args.out.write_bytes(png)
    print(json.dumps(answer, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
