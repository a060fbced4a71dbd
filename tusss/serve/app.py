"""The FastAPI application of ``tusss serve`` (see :mod:`tusss.serve`)."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np

from tusss.errors import InputError, TusssError

try:  # the [serve] extra
    from fastapi import FastAPI, File, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise ImportError("tusss.serve needs the [serve] extra: pip install 'tusss[serve]' (fastapi, uvicorn, "
                      "prometheus_client, python-multipart, pycocotools)") from _e

from .batcher import MicroBatcher, QueueFull
from .encode import mask_rows, npy_bytes, png_bytes, rle_encode
from .metrics import ServiceMetrics

log = logging.getLogger("tusss.serve")

__all__ = ["ServeConfig", "create_app", "decode_upload", "error_response", "install_error_handlers", "parse_classes",
           "rle_encode", "UploadError"]

CONTENT_TYPES = {"image/jpeg": "JPEG", "image/jpg": "JPEG", "image/png": "PNG"}


@dataclass
class ServeConfig:
    """Service settings.

    Attributes:
        max_batch: most requests per heavy-stage batch (1 = micro-batching off).
        max_wait_ms: how long a request waits for others to batch with.
        max_queue: most waiting requests; beyond it: 503 + ``Retry-After: retry_after_s``.
        max_upload_bytes: largest accepted image upload (413 beyond).
        max_pixels: largest accepted width x height, read from the image header before decoding (413 beyond).
        warmup: run one image end to end before /readyz answers ready.
    """

    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    max_upload_bytes: int = 20 << 20
    max_pixels: int = 4096 * 4096
    retry_after_s: int = 1
    warmup: bool = True


class UploadError(Exception):
    """A bad request: ``status`` (4xx) and a message naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_classes(classes: str | None) -> list[str] | None:
    """The ``?classes=a,b,c`` query of ``/v1/segment``: the class names, or None when absent (400 when a name
    is empty)."""
    if classes is None:
        return None
    names = [c.strip() for c in classes.split(",")]
    if not all(names):
        raise UploadError(400, f"classes must be comma-separated non-empty names, got {classes!r}")
    return names


def decode_upload(data: bytes, content_type: str | None, cfg: ServeConfig) -> np.ndarray:
    """Check and decode an uploaded JPEG / PNG to (H, W, 3) uint8 RGB.

    Order: declared content type (415), size (413), header only (``Image.open`` is lazy): format (415) and
    pixel count (413, before any pixel is decoded), then the full decode (400 when truncated / corrupt).
    """
    from PIL import Image, UnidentifiedImageError

    ct = (content_type or "").split(";")[0].strip().lower()
    if ct not in CONTENT_TYPES and ct not in ("", "application/octet-stream"):
        raise UploadError(415, f"unsupported content type {ct!r}: send image/jpeg or image/png")
    if len(data) == 0:
        raise UploadError(400, "the image upload is empty")
    if len(data) > cfg.max_upload_bytes:
        raise UploadError(413, f"the image upload has {len(data)} bytes, the limit is {cfg.max_upload_bytes}")
    try:
        im = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        raise UploadError(415, "the upload is not a JPEG or PNG image (unrecognised header)") from None
    except Image.DecompressionBombError as e:  # PIL's own header check (> 2 x Image.MAX_IMAGE_PIXELS)
        raise UploadError(413, f"the image header claims too many pixels: {e}") from None
    except Exception as e:  # noqa: BLE001 - any decoder error is the client's bad file
        raise UploadError(400, f"cannot read the image header: {e}") from None
    if im.format not in ("JPEG", "PNG"):
        raise UploadError(415, f"the upload is a {im.format} image: send JPEG or PNG")
    w, h = im.size
    if w <= 0 or h <= 0:
        raise UploadError(400, f"the image header claims an empty size {w} x {h}")
    if w * h > cfg.max_pixels:
        raise UploadError(413, f"the image is {w} x {h} = {w * h} pixels, the limit is {cfg.max_pixels}")
    try:
        im.load()
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - truncated / corrupt pixel data
        raise UploadError(400, f"cannot decode the {im.format} image (truncated or corrupt): {e}") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise UploadError(400, f"the image has an unusable shape {arr.shape}")
    return np.ascontiguousarray(arr)


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """The service's one error body: ``{"error": message}`` with ``status`` (and e.g. Retry-After headers)."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every error of ``app`` answers :func:`error_response`: 422 for invalid requests (naming the fields),
    the HTTP status of routing errors, 500 (logged) only for a bug — never for a client's input."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query"))
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        return error_response(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:  # a bug, never the client's input
        log.exception("internal error on %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}")


def create_app(predictor: Any | Callable[[], Any], config: ServeConfig | None = None) -> Any:
    """The FastAPI app on a :class:`tusss.Predictor` (or a zero-argument factory of one, called in a background
    thread at startup so that /healthz answers while the models load; /readyz turns ready after warm-up)."""
    cfg = config or ServeConfig()
    metrics = ServiceMetrics()
    state: dict[str, Any] = {"predictor": None, "batcher": None, "error": None, "ready": False}

    def on_batch(n: int, waits: list[float], results: list | None) -> None:
        metrics.batch.observe(n)
        for w in waits:
            metrics.queue_wait.observe(w)
        t = getattr(results[0], "timings", None) if results else None
        for stage in ("masks", "embed", "classify", "paint"):
            if t and stage in t:
                metrics.stage.labels(stage).observe(float(t[stage]))

    def load() -> None:
        try:
            p = predictor() if callable(predictor) and not hasattr(predictor, "predict_batch") else predictor
            state["predictor"] = p
            if cfg.warmup:
                p.warm_up()
            state["batcher"] = MicroBatcher(p, cfg.max_batch, cfg.max_wait_ms, cfg.max_queue, on_batch)
            state["ready"] = True
            metrics.ready.set(1)
            log.info("tusss serve: ready (%s)", p.backend)
        except Exception as e:  # noqa: BLE001 - reported by /readyz, the process stays up
            state["error"] = f"{type(e).__name__}: {e}"
            log.error("tusss serve: loading the models failed: %s", state["error"])

    async def lifespan(app: Any):
        threading.Thread(target=load, name="tusss-load", daemon=True).start()
        yield
        b = state.get("batcher")
        if b is not None:
            await asyncio.get_running_loop().run_in_executor(None, b.close)

    app = FastAPI(title="tusss", version=_version(), lifespan=lifespan)
    app.state.tusss = state
    app.state.metrics = metrics

    err = error_response
    install_error_handlers(app)

    @app.middleware("http")
    async def _count(request: Request, call_next: Any) -> Any:
        t0 = time.perf_counter()
        path = request.url.path
        if path.startswith("/v1/") and request.method == "POST":
            cl = request.headers.get("content-length")
            if cl is not None and cl.isdigit() and int(cl) > cfg.max_upload_bytes + (64 << 10):
                resp = err(413, f"the request has {cl} bytes, the image limit is {cfg.max_upload_bytes}")
                metrics.requests.labels(path, "413").inc()
                return resp
        resp = await call_next(request)
        if path.startswith("/v1/"):
            metrics.requests.labels(path, str(resp.status_code)).inc()
            metrics.latency.labels(path).observe(time.perf_counter() - t0)
        metrics.queue.set(state["batcher"].depth if state["batcher"] is not None else 0)
        return resp

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Any:
        if state["ready"]:
            return {"ready": True}
        return JSONResponse({"ready": False, "error": state["error"] or "loading models / warming up"},
                            status_code=503)

    @app.get("/metrics")
    async def prom() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        metrics.queue.set(state["batcher"].depth if state["batcher"] is not None else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/info")
    async def info() -> Any:
        p = state["predictor"]
        if p is None:
            return err(503, state["error"] or "models are loading", {"Retry-After": str(cfg.retry_after_s)})
        return {**p.info(), "ready": state["ready"],
                "serve": {"max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms, "max_queue": cfg.max_queue,
                          "max_upload_bytes": cfg.max_upload_bytes, "max_pixels": cfg.max_pixels}}

    async def run_job(kind: str, image: UploadFile, classes: Any) -> Any:
        if not state["ready"]:
            return err(503, state["error"] or "not ready: models are loading", {"Retry-After": str(cfg.retry_after_s)})
        data = await image.read(cfg.max_upload_bytes + 1)
        loop = asyncio.get_running_loop()
        try:
            arr = await loop.run_in_executor(None, decode_upload, data, image.content_type, cfg)
        except UploadError as e:
            return err(e.status, e.message)
        try:
            fut = state["batcher"].submit(kind, arr, classes)
        except QueueFull as e:
            return err(503, f"server busy: {e}; retry later", {"Retry-After": str(cfg.retry_after_s)})
        try:
            return await asyncio.wrap_future(fut)
        except TusssError as e:
            return err(400, str(e))

    @app.post("/v1/segment")
    async def segment(image: Annotated[UploadFile, File()], format: Annotated[str, Query()] = "json",  # noqa: A002
                      classes: Annotated[str | None, Query()] = None) -> Any:
        if format not in ("json", "png"):
            return err(400, f"format must be 'json' or 'png', got {format!r}")
        try:
            names = parse_classes(classes)
            if names is not None and state["predictor"] is not None:
                state["predictor"].classifier_for(names)  # unknown / bad list -> 400 before queueing
        except (UploadError, InputError) as e:
            return err(getattr(e, "status", 400), getattr(e, "message", str(e)))
        res = await run_job("segment", image, names)
        if not hasattr(res, "label_map"):
            return res
        if format == "png":
            return Response(png_bytes(res.label_map), media_type="image/png",
                            headers={"X-Num-Masks": str(len(res.labels))})
        ms = res.masks
        h, w = ms.image_hw
        return {"image": {"height": h, "width": w}, "class_names": list(res.class_names),
                "masks": mask_rows(ms, {"labels": res.labels, "conf": res.conf}, res.class_names),
                "timings": {k: float(v) for k, v in res.timings.items()}}

    @app.post("/v1/embed")
    async def embed(image: Annotated[UploadFile, File()], format: Annotated[str, Query()] = "json") -> Any:  # noqa: A002
        if format not in ("json", "npy"):
            return err(400, f"format must be 'json' (base64 .npy) or 'npy', got {format!r}")
        res = await run_job("embed", image, None)
        if not isinstance(res, tuple):
            return res
        ms, emb = res
        e16 = np.ascontiguousarray(emb, dtype=np.float16)
        if format == "npy":
            return Response(npy_bytes(e16), media_type="application/x-npy", headers={"X-Num-Masks": str(len(ms))})
        h, w = ms.image_hw
        return {"image": {"height": h, "width": w}, "masks": mask_rows(ms),
                "embeddings": {"dtype": "float16", "shape": list(e16.shape), "encoding": "npy+base64",
                               "data": base64.b64encode(npy_bytes(e16)).decode("ascii")}}

    return app


def _version() -> str:
    import tusss

    return tusss.__version__
