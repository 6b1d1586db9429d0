"""LungCT BentoML service: chest CT slice classification with adaptive batching.

Research use only, not for diagnosis.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import signal
from pathlib import Path

import aiohttp
import anyio
import bentoml
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lungct.batching import MicroBatcher
from lungct.bentoml_patches import patch_dependency_keepalive, patch_timeout_middleware
from lungct.config import DecodeConfig, ServeConfig
from lungct.decode import DecodeError, decode_image
from lungct.explain import grad_cam, overlay_png
from lungct.memory import limit_arenas, trim_every
from lungct.middleware import CloseWhenStopping, Stopping, UploadGuard, UploadRoute
from lungct.predictor import Predictor
from lungct.preprocess import Framing, load_tensor, preprocess_framed
from lungct.store import ModelMissingError, check_model, read_info

patch_timeout_middleware()  # BentoML 1.4.40 keeps every request alive for the timeout (memory)
CONFIG = ServeConfig.from_env()
patch_dependency_keepalive(CONFIG.model_keepalive_s)  # and pools model connections past the model's keep-alive
try:  # fail at start, in the serving CLI's own process, rather than restarting workers forever
    check_model(CONFIG.model_tag)
except ModelMissingError as error:
    raise SystemExit(f"lungct: cannot serve: {error}") from error
RESEARCH_ONLY = "Research use only, not for diagnosis."
logger = logging.getLogger("bentoml.lungct")  # BentoML's log handlers and format
STOPPING = Stopping()  # this process got SIGTERM


class Prediction(BaseModel):
    """The class with the highest calibrated probability, and all four probabilities."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    class_name: str = Field(alias="class", description="predicted class")
    confidence: float = Field(description="probability of the predicted class")
    probabilities: dict[str, float] = Field(description="probability of every class")
    model: str = Field(description="tag of the model that answered")


class Explanation(Prediction):
    """A prediction and its Grad-CAM heat-map over the uploaded slice."""

    heatmap_png: str = Field(description="base64 PNG, the uploaded slice's size, heat-map overlaid")


class BatchItem(BaseModel):
    """One file of a batch: its prediction, or the error that file alone caused."""

    index: int
    prediction: Prediction | None = None
    error: str | None = None


class Overloaded(Exception):
    """The model queue waited longer than max_latency_ms, or the model process is restarting: 503."""

    def response(self) -> JSONResponse:
        return JSONResponse({"error": "the model is unavailable or overloaded; retry later"}, status_code=503,
                            headers={"Retry-After": "1"})


def _wrap_sigterm(handler) -> None:
    """Install handler(original, signum, frame) for SIGTERM around the handler uvicorn installed.
    Call during start-up (service __init__), after uvicorn has installed its own."""
    original = signal.getsignal(signal.SIGTERM)
    if callable(original):
        signal.signal(signal.SIGTERM, lambda signum, frame: handler(original, signum, frame))


def on_sigterm(action) -> None:
    """Run `action()` on SIGTERM, then uvicorn's handler (stop accepting, finish in-flight requests)."""

    def handler(original, signum, frame) -> None:
        action()
        original(signum, frame)

    _wrap_sigterm(handler)


def defer_sigterm(seconds: float) -> None:
    """Keep the model process serving for `seconds` after SIGTERM.

    BentoML stops all its processes at once; the front process finishes its in-flight requests
    on SIGTERM, and those still need the model.
    """
    loop = asyncio.get_running_loop()
    _wrap_sigterm(lambda original, signum, frame: loop.call_soon_threadsafe(loop.call_later, seconds, original, signum, frame))


def _model_info(_: Request) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().describe())


info_app = Starlette(routes=[Route("/", _model_info, methods=["GET"])])


@bentoml.service(
    name="lungct-model",
    workers=1,
    traffic={"timeout": CONFIG.request_timeout_s},
    # bentoml issue 5540: the client behind bentoml.depends rebuilds its session every 100 calls
    # and kills requests in flight; never rebuild it.
    runner_connection={"max_requests": 2**31 - 1, "max_age": 10.0**9},
)
class LungCTModel:
    """The model process: loads the Keras model once and answers batched model calls."""

    def __init__(self) -> None:
        self.predictor = Predictor.from_store(CONFIG.model_tag)
        defer_sigterm(CONFIG.drain_seconds)

    @bentoml.api(batchable=True, max_batch_size=CONFIG.max_batch_size, max_latency_ms=CONFIG.max_latency_ms)
    def classify(self, tensors: np.ndarray) -> np.ndarray:
        """Model call on preprocessed tensors (N, size, size, 1); batched across requests."""
        return self.predictor.probabilities(tensors)

    @bentoml.api
    def gradcam(self, tensor: np.ndarray, class_index: int) -> np.ndarray:
        """Grad-CAM heat-map over the model input for one preprocessed tensor (size, size, 1)."""
        return grad_cam(self.predictor.model, tensor, class_index)[1]


@bentoml.asgi_app(info_app, path="/model")
# runner_probe off: __is_ready__ probes the model process itself and answers 503 (BentoML's probe
# answers 500 after 5 s when the model process is down).
@bentoml.service(name="lungct", workers=CONFIG.front_workers, traffic={"timeout": CONFIG.request_timeout_s},
                 runner_probe={"enabled": False})
class LungCT:
    """Classifies a chest CT slice as adenocarcinoma, large cell carcinoma, squamous cell carcinoma or normal.

    Decoding and preprocessing run here (no TensorFlow in this process); the model call runs in
    the LungCTModel process, so a crashed model process is restarted while this one answers 503.
    """

    model = bentoml.depends(LungCTModel)

    def __init__(self) -> None:
        self.info, self.tag, self.created = read_info(CONFIG.model_tag)
        self.preprocess = self.info.preprocess
        self.decode = DecodeConfig()
        self.limiter = anyio.CapacityLimiter(2)
        self.batcher = MicroBatcher(lambda batch: self._model_call("classify", batch), CONFIG.max_batch_size,
                                    CONFIG.batch_wait_ms)
        self.model_up = True
        self._recovery: asyncio.Task | None = None
        limit_arenas(2)
        trim_every(CONFIG.malloc_trim_s)
        on_sigterm(lambda: setattr(STOPPING, "set", True))

    async def __is_ready__(self) -> bool:
        """Ready unless this process stops or the model process is down: known from a failed model
        call, or its own /readyz does not answer 200 within `readiness_timeout_s` (a killed model
        process is restarted by BentoML; until it has loaded, calls to it wait or fail)."""
        return self.model_up and not STOPPING.set and await self._model_ready()

    async def _model_ready(self) -> bool:
        try:
            return await self.model.is_ready(CONFIG.readiness_timeout_s)
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
            return False

    def _model_down(self) -> None:
        if self.model_up:
            self.model_up = False
            self._recovery = asyncio.create_task(self._await_model())

    async def _await_model(self) -> None:
        while not await self._model_ready():
            await asyncio.sleep(0.2)
        self.model_up = True

    def describe(self) -> dict:
        info = self.info
        return {
            "tag": self.tag,
            "created": self.created,
            "classes": info.classes,
            "input_size": info.preprocess.size,
            "preprocess": info.preprocess.model_dump(),
            "temperature": info.temperature,
            "class_bias": dict(zip(info.classes, info.class_bias)),
            "metrics": info.metrics,
            "versions": info.versions,
            "notice": RESEARCH_ONLY,
        }

    def _load(self, path: Path) -> np.ndarray:
        return load_tensor(path.read_bytes(), "upload", self.preprocess, self.decode)

    def _load_framed(self, path: Path) -> tuple[np.ndarray, np.ndarray, Framing]:
        decoded = decode_image(path.read_bytes(), "upload", self.decode)
        return (decoded, *preprocess_framed(decoded, self.preprocess))

    async def _tensor(self, path: Path) -> np.ndarray:
        """Read and preprocess an upload in one worker thread (one thread hop per request)."""
        return await anyio.to_thread.run_sync(self._load, path, limiter=self.limiter)

    async def _model_call(self, method: str, *args, resends: int = CONFIG.model_call_resends) -> np.ndarray:
        """Call the model process; Overloaded (503) when it is down, restarting or overloaded.
        /predict's `classify` calls come through the front's MicroBatcher and are batched again by
        BentoML's adaptive batching in the model process.

        A call whose connection closes under it is sent again (at most `resends` times) if the model
        process still answers its /readyz (model calls have no side effects; the pool's keep-alive,
        `model_keepalive_s`, keeps idle connections from closing as they are reused, but a connection
        can still be cut). Otherwise the model process is down (a resend can take another pooled
        connection that closed too)."""
        if not self.model_up:
            raise Overloaded()
        try:
            return np.asarray(await getattr(self.model.to_async, method)(*args))
        except bentoml.exceptions.ServiceUnavailable as exc:
            logger.warning("model process refused %s: %s", method, exc)
            raise Overloaded() from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            if not resends:
                reason = "again after resending"
            elif await self._model_ready():
                logger.warning("model call %s lost its connection (%r); the model process answers: resending", method, exc)
                return await self._model_call(method, *args, resends=resends - 1)
            else:
                reason = "and the model process does not answer its /readyz"
            logger.warning("model call %s failed (%r) %s: taken as down, 503 until it answers", method, exc, reason)
            self._model_down()
            raise Overloaded() from exc

    def _prediction(self, probabilities: np.ndarray) -> Prediction:
        classes = self.info.classes
        best = int(np.argmax(probabilities))
        return Prediction(
            class_name=classes[best], confidence=float(probabilities[best]),
            probabilities={c: float(p) for c, p in zip(classes, probabilities)}, model=self.tag,
        )

    @bentoml.api
    async def predict(self, image: Path) -> Prediction:
        """Classify one CT slice (PNG, JPEG or DICOM) sent as multipart field `image`. Research use only, not for diagnosis."""
        try:
            with self.batcher.preparing():
                tensor = await self._tensor(image)
        except DecodeError as exc:
            return JSONResponse({"error": exc.reason}, status_code=400)
        try:
            probabilities = await self.batcher.submit(tensor)
        except Overloaded as exc:
            return exc.response()
        return self._prediction(probabilities)

    @bentoml.api
    async def explain(self, image: Path) -> Explanation:
        """Classify one slice (as /predict) and return a Grad-CAM heat-map overlaid on it. Research use only, not for diagnosis."""
        try:
            decoded, tensor, frame = await anyio.to_thread.run_sync(self._load_framed, image, limiter=self.limiter)
        except DecodeError as exc:
            return JSONResponse({"error": exc.reason}, status_code=400)
        try:
            probabilities = (await self._model_call("classify", tensor[np.newaxis]))[0]
            cam = await self._model_call("gradcam", tensor, int(np.argmax(probabilities)))
        except Overloaded as exc:
            return exc.response()
        png, _ = await anyio.to_thread.run_sync(overlay_png, decoded, cam, frame, limiter=self.limiter)
        prediction = self._prediction(probabilities)
        return Explanation(**prediction.model_dump(), heatmap_png=base64.b64encode(png).decode())

    @bentoml.api
    async def predict_batch(self, images: list[Path]) -> list[BatchItem]:
        """Classify several slices sent as repeated multipart field `images`; answers keep the upload order. Research use only, not for diagnosis."""
        items: list[BatchItem] = []
        tensors: list[np.ndarray] = []
        for index, path in enumerate(images):
            try:
                tensors.append(await self._tensor(path))
                items.append(BatchItem(index=index))
            except DecodeError as exc:
                items.append(BatchItem(index=index, error=exc.reason))
        if tensors:
            try:
                probabilities = iter(await self._model_call("classify", np.stack(tensors)))
            except Overloaded as exc:
                return exc.response()
            for item in items:
                if item.error is None:
                    item.prediction = self._prediction(next(probabilities))
        return items


LungCT.add_asgi_middleware(CloseWhenStopping, stopping=STOPPING)
LungCT.add_asgi_middleware(
    UploadGuard,
    routes={"/predict": UploadRoute("image", 1), "/explain": UploadRoute("image", 1), "/predict_batch": UploadRoute("images", CONFIG.max_files_per_batch)},
    max_bytes=CONFIG.max_upload_bytes,
    aliases={"/model": "/model/"},
)
