"""The HTTP app: the V2 inference protocol, ``POST /predict`` for image files, health, ``/metrics``.

``create_app(model, options)`` wraps a loaded model (``classifier.load(path)``: a checkpoint, ONNX or
ORT file). Every model call goes through one ``Batcher``: image requests run ``model.predict`` (the
predictor's own decoding and pixel pipeline, so ``/predict`` answers what ``model.predict`` answers on
the same files), V2 requests run ``predictor.logits`` on the tensor they send.

Bad input never reaches the model as a crash: undecodable images, empty bodies, bodies over
``max_body_mb``, V2 requests with a wrong name, shape or datatype get a 4xx and ``{"error": "one line"}``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from contextlib import asynccontextmanager
from typing import NamedTuple

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from classifier.data.images import load_image
from classifier.errors import ClassifierError
from classifier.serve import v2
from classifier.serve.batching import Batcher
from classifier.serve.metrics import ServerMetrics, log_request
from classifier.serve.options import ServeOptions
from classifier.version import __version__

IMAGE_FIELDS = ("files", "file")  # multipart field names /predict reads
DEADLINE = "classifier.deadline"  # scope key: monotonic time by which the request must be answered
TOPK_DEFAULT = 5
# Prediction fields that are not copied into a /predict item as they are (item() writes them its own way)
_ITEM_OWN = {"label", "confidence", "index", "topk", "probs", "path"}


class BodyTooLarge(Exception):
    pass


class SlowRequest(Exception):
    pass


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())[:500]}, status_code=status)


def create_app(model, options: ServeOptions | None = None) -> FastAPI:
    """The ASGI app serving ``model`` (a ``classifier.Model``)."""
    options = options or ServeOptions()
    predictor = model.predictor
    metrics = ServerMetrics()
    batcher = Batcher(lambda items: run_batch(model, items, options.max_batch), max_batch=options.max_batch,
                      max_delay_s=options.max_delay_ms / 1000, on_batch=metrics.batch_size.observe)
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        state["ready"] = True
        yield
        state["ready"] = False
        await run_in_threadpool(batcher.stop)  # connections are closed by now: nothing is waiting

    app = FastAPI(title="classifier", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(RequestGuard, metrics=metrics, options=options)
    add_error_handlers(app)
    app.state.batcher, app.state.metrics = batcher, metrics

    async def run_model(request: Request, items: list) -> list:
        remaining = request.scope[DEADLINE] - time.monotonic()
        try:
            return await batcher.run(items, timeout=max(remaining, 0.001))
        except asyncio.TimeoutError:
            raise HTTPException(503, f"not answered within {options.timeout_s:g} s (server busy)") from None

    def check_name(name: str) -> None:
        if name != options.model_name:
            raise HTTPException(404, f"unknown model '{name}' (this server serves '{options.model_name}')")

    # --- health and metadata (V2)
    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        ok = state["ready"] and batcher.running
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2")
    async def server_metadata():
        return {"name": "classifier", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def metadata(name: str, version: str = v2.MODEL_VERSION):
        check_name(name)
        return v2.model_metadata(name, predictor)

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = v2.MODEL_VERSION):
        check_name(name)
        ok = state["ready"] and batcher.running
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str = v2.MODEL_VERSION):
        check_name(name)
        with batcher.coming():
            body = await request.body()
            req, tensor = v2.parse_infer_request(body, request.headers.get(v2.HEADER_LENGTH), predictor)
        rows = await run_model(request, [(TENSOR, row) for row in tensor])
        metrics.images.labels("v2").inc(len(rows))
        logits = np.stack(rows)
        content, headers = v2.infer_response(name, req, logits, predictor.probabilities(logits))  # calibrated
        media = "application/octet-stream" if headers else "application/json"
        return Response(content, media_type=media, headers=headers)

    # --- images
    @app.post("/predict")
    async def predict(request: Request, topk: int = TOPK_DEFAULT, threshold: float | None = None,
                      reject: bool = False, explain: bool = False):
        """``topk``; ``threshold``, ``reject``, ``explain``: as ``Model.predict``'s."""
        if topk < 1:
            raise HTTPException(400, f"topk must be at least 1, got {topk}")
        asked = PredictOptions(threshold, reject, explain)  # (not ``options``: the server's, used by run_model)
        with batcher.coming():
            uploads = await read_images(request)
            images = await run_in_threadpool(decode, uploads, predictor.prep.channels)
        predictions = await run_model(request, [(asked, im) for im in images])
        metrics.images.labels("predict").inc(len(predictions))
        return [item(p, topk, name) for p, (name, _) in zip(predictions, uploads)]

    @app.get("/metrics")
    async def prometheus():
        body, media = metrics.exposition()
        return Response(body, media_type=media)

    return app


# --- the model call ---------------------------------------------------------------------------------------

class PredictOptions(NamedTuple):
    """``Model.predict``'s options a /predict request sets; merged images are predicted per options."""
    threshold: float | None = None
    reject: bool = False
    explain: bool = False


TENSOR = "tensor"  # the kind of a V2 tensor row among merged items (an image's is its PredictOptions)


def run_batch(model, items: list, max_batch: int) -> list:
    """One model call's worth of merged requests, ``(kind, payload)`` each: an image (kind: its
    PredictOptions, payload HWC uint8) -> a Prediction from ``model.predict``; a V2 tensor row (kind
    ``TENSOR``, payload CHW) -> its logits. Same-shaped items run together; more than ``max_batch``
    are run in chunks of that many."""
    results = [None] * len(items)
    groups = {}
    for i, (kind, payload) in enumerate(items):
        key = (kind, payload.shape, payload.dtype) if kind == TENSOR else (kind,)
        groups.setdefault(key, []).append(i)
    for key, idx in groups.items():
        if key[0] == TENSOR:
            for k in range(0, len(idx), max_batch):
                chunk = idx[k:k + max_batch]
                for i, row in zip(chunk, model.predictor.logits(np.stack([items[i][1] for i in chunk]))):
                    results[i] = row
            continue
        idx.sort(key=lambda i: items[i][1].shape)  # same-sized images side by side: one model call
        predictions = model.predict([items[i][1] for i in idx], topk=len(model.classes),
                                    batch_size=max(max_batch, 1), **key[0]._asdict())
        for i, p in zip(idx, predictions):
            results[i] = p
    return results


# --- /predict input and output ----------------------------------------------------------------------------

async def read_images(request: Request) -> list[tuple[str | None, bytes]]:
    """(file name, bytes) of every image: multipart fields ``files`` / ``file``, or the raw body."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        uploads = [u for name in IMAGE_FIELDS for u in form.getlist(name)]
        if not uploads:
            raise HTTPException(400, f"no image in the form: send files in a multipart field named "
                                     f"{' or '.join(repr(f) for f in IMAGE_FIELDS)}")
        if not all(isinstance(u, UploadFile) for u in uploads):
            raise HTTPException(400, f"multipart fields {' and '.join(IMAGE_FIELDS)} must be files, not text values")
        return [(u.filename, await u.read()) for u in uploads]
    body = await request.body()
    if not body:
        raise HTTPException(400, "empty request body (0 bytes): send an image as the body or as multipart files")
    return [(None, body)]


def decode(uploads: list, channels: int) -> list[np.ndarray]:
    """The predictor's own decoding (``load_image``); an unreadable image is a 400 naming it."""
    images = []
    for i, (name, data) in enumerate(uploads):
        label = name or ("the request body" if len(uploads) == 1 else f"image {i}")
        if not data:
            raise HTTPException(400, f"{label}: empty file (0 bytes)")
        images.append(load_image(label, channels, data=data))  # BadImageError -> 400 (a ClassifierError)
    return images


def item(prediction, topk: int, file: str | None) -> dict:
    """One image's answer: file, label, confidence, index, topk; any further field a Prediction carries
    (a label set, an unknown flag, a heat map, ...) is added under its own name when it is set."""
    out = {"file": file, "label": prediction.label, "confidence": prediction.confidence,
           "index": prediction.index,
           "topk": [{"label": label, "confidence": conf} for label, conf in prediction.topk[:topk]]}
    for f in dataclasses.fields(prediction):
        value = getattr(prediction, f.name)
        if f.name not in _ITEM_OWN and value is not None:
            out[f.name] = jsonable(value)
    return out


def jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


# --- errors, limits, logs and metrics ---------------------------------------------------------------------

def add_error_handlers(app: FastAPI) -> None:
    """Every error is ``{"error": "one line"}`` with its status; unexpected ones are 500 (our bug)."""
    handlers = {
        v2.V2Error: lambda e: error(e.status, str(e)),
        ClassifierError: lambda e: error(400, str(e)),
        BodyTooLarge: lambda e: error(413, str(e)),
        SlowRequest: lambda e: error(408, str(e)),
        HTTPException: lambda e: error(e.status_code, e.detail),
        RequestValidationError: lambda e: error(422, "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}" for err in e.errors())),
    }
    for kind, make in handlers.items():
        app.add_exception_handler(kind, lambda _request, exc, make=make: make(exc))
    app.add_exception_handler(Exception, lambda _request, exc: error(
        500, f"internal error ({type(exc).__name__}): {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"))


class RequestGuard:
    """ASGI middleware around every HTTP request: the body-size limit and upload timeout (enforced while
    the body is read), the deadline the model call must meet, the in-flight gauge, the metrics and one
    log line (method, path, status, milliseconds)."""

    def __init__(self, app, *, metrics: ServerMetrics, options: ServeOptions):
        self.app, self.metrics, self.options = app, metrics, options

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        deadline = time.monotonic() + self.options.timeout_s
        scope[DEADLINE] = deadline
        status = {"code": 500}
        limit = self.options.max_body_bytes

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            declared = dict(scope.get("headers") or {}).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await error(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes "
                                 f"(--max-body-mb {self.options.max_body_mb:g})")(scope, receive, send_logged)
            else:
                await self.app(scope, self._limited(receive, deadline, limit), send_logged)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            elapsed = time.perf_counter() - start
            self.metrics.observe(scope["method"], getattr(route, "path", "unmatched"), status["code"], elapsed)
            log_request(scope["method"], scope["path"], status["code"], elapsed * 1000)

    def _limited(self, receive, deadline: float, limit: int):
        seen = {"bytes": 0, "done": False}

        async def receive_limited():
            if seen["done"]:
                return await receive()  # after the body: disconnect notices, no deadline
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                raise SlowRequest(f"request body not received within {self.options.timeout_s:g} s") from None
            if message["type"] == "http.request":
                seen["bytes"] += len(message.get("body", b""))
                seen["done"] = not message.get("more_body", False)
                if seen["bytes"] > limit:
                    raise BodyTooLarge(f"request body over the limit of {limit} bytes "
                                       f"(--max-body-mb {self.options.max_body_mb:g})")
            return message

        return receive_limited
