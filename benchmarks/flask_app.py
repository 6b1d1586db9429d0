"""The seed-style baseline for the serving benchmark: one Flask app, one `model.predict` per request.

    python benchmarks/flask_app.py --port 5000 --model lungct:<version>

Same model from the BentoML store (``$BENTOML_HOME``), same decode and preprocessing code
(lungct.preprocess.load_tensor) as the service; no batching, Flask's threaded development server.
``--call compiled`` swaps Keras' ``model.predict`` for the service's compiled Predictor call (batch of 1)
to separate the cost of ``model.predict`` from the cost of not batching.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/flask_app.py` from anywhere

import numpy as np  # noqa: E402
from flask import Flask, jsonify, request  # noqa: E402

from lungct.decode import DecodeError  # noqa: E402
from lungct.predictor import softmax  # noqa: E402
from lungct.preprocess import load_tensor  # noqa: E402
from lungct.store import load_from_store  # noqa: E402


def create_app(tag: str, call: str = "predict") -> Flask:
    model, info, full_tag, _ = load_from_store(tag)
    if call == "compiled":
        from lungct.predictor import Predictor

        predictor = Predictor(model, info, full_tag)

        def logits(batch: np.ndarray) -> np.ndarray:
            return predictor.logits(batch)
    else:
        def logits(batch: np.ndarray) -> np.ndarray:
            return model.predict(batch, verbose=0)

    size = info.preprocess.size
    logits(np.zeros((1, size, size, 1), np.float32))  # build the predict function before serving
    app = Flask("lungct-flask-baseline")

    @app.get("/readyz")
    def readyz():
        return "ok"

    @app.post("/predict")
    def predict():
        upload = request.files.get("image")
        if upload is None:
            return jsonify(error="multipart field 'image' is required"), 400
        try:
            tensor = load_tensor(upload.read(), "upload", info.preprocess)
        except DecodeError as exc:
            return jsonify(error=exc.reason), 400
        probabilities = softmax(logits(tensor[np.newaxis]), info.temperature, info.class_bias)[0]
        best = int(np.argmax(probabilities))
        return jsonify({
            "class": info.classes[best], "confidence": float(probabilities[best]),
            "probabilities": {c: float(p) for c, p in zip(info.classes, probabilities)}, "model": full_tag,
        })

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lungct:latest", help="model tag in the BentoML store")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--call", choices=("predict", "compiled"), default="predict",
                        help="Keras model.predict per request (the seed) or the compiled Predictor call")
    args = parser.parse_args(argv)
    create_app(args.model, args.call).run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
