"""Replicated serving on Ray Serve: the segmentation service as a deployment of ``tusss.Predictor``.

Each replica holds one warm :class:`tusss.Predictor`; concurrent requests to a replica are grouped by
``@serve.batch`` (``max_batch_size``, ``batch_wait_timeout_s``) and run through
:meth:`Predictor.predict_batch`, so the SAM encoder and the DBA-CLIP windows of a batch run together. Ray Serve
calls :meth:`TusssDeployment.check_health` (period ``health_check_period_s``) and restarts a replica that fails it.

HTTP endpoints (FastAPI through ``@serve.ingress``; the routes of the single-process service)::

    POST /v1/segment   multipart field ``image`` (JPEG/PNG); ?format=json (default) | png; ?classes=a,b (text
                       classifier only). JSON: image_hw, class_names, per mask id, COCO RLE (pycocotools' compressed
                       counts), bbox_xywh, area, level, predicted_iou, stability, label, class, score; timings.
    POST /v1/embed     multipart ``image``: masks (RLE, area, level) + float16 embeddings as base64 ``.npy`` bytes
    GET  /healthz      the replica is alive            GET /readyz   models loaded and one warm-up image run
    GET  /v1/info      models, weights ids, backend, classifier, versions, replica and batching settings

Bad input answers 4xx with ``{"error": ...}`` naming the problem (400 undecodable image / bad option, 413 upload
or pixel count over the limit (the header is checked before decoding), 415 content type); the replica keeps
serving. Metrics: Ray Serve's own (``ray_serve_*``, per deployment and route) on the Ray metrics port.

Start it with ``serve run tusss.distributed.serve:build_app sam=vit_tiny checkpoint=random clip=tusss-tiny
weights=random classes=cat,dog`` (key=value pairs: see :func:`build_app`), ``serve run
tusss.distributed.serve:app`` (options as JSON in ``$TUSSS_SERVE_OPTIONS``), or :func:`run` from Python.
Ray and FastAPI are imported when this module is imported: it is only imported to serve on Ray.
"""

# no `from __future__ import annotations`: FastAPI must see the route annotations as objects (Ray Serve's
# ingress rebuilds the routes and cannot resolve string annotations)
import asyncio
import base64
import io
import json
import os
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve

from tusss.errors import InputError

__all__ = ["TusssDeployment", "api", "app", "build_app", "run", "segmentation_json", "DEPLOYMENT_KEYS"]

#: build_app keys that configure the deployment (everything else goes to Predictor.from_pretrained/from_engine).
DEPLOYMENT_KEYS = {"num_replicas": int, "num_cpus": float, "num_gpus": float, "max_batch_size": int,
                   "batch_wait_timeout_s": float, "max_upload_bytes": int, "max_pixels": int,
                   "health_check_period_s": float, "max_ongoing_requests": int}
DEFAULTS = {"num_replicas": 1, "num_cpus": 1.0, "num_gpus": 0.0, "max_batch_size": 8, "batch_wait_timeout_s": 0.01,
            "max_upload_bytes": 32 << 20, "max_pixels": 40_000_000, "health_check_period_s": 10.0,
            "max_ongoing_requests": 64}
DEFAULT_KEYS_SHOWN = ("max_batch_size", "batch_wait_timeout_s", "max_upload_bytes", "max_pixels")
IMAGE_TYPES = ("image/jpeg", "image/png", "image/jpg", "application/octet-stream")

api = FastAPI(title="tusss segmentation service (Ray Serve)")


class HTTPError(Exception):
    """A request error answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@api.exception_handler(HTTPError)
async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
    return JSONResponse({"error": "bad request: " + "; ".join(parts)}, status_code=400)


@api.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


def decode_upload(data: bytes, content_type: str | None, max_bytes: int, max_pixels: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an uploaded JPEG/PNG; the pixel count is checked from the header before decoding.

    Raises:
        HTTPError: 413 (too many bytes / pixels), 415 (content type), 400 (empty or undecodable).
    """
    from PIL import Image, UnidentifiedImageError

    if content_type and content_type.split(";")[0].strip().lower() not in IMAGE_TYPES:
        raise HTTPError(415, f"image content type {content_type!r} is not supported (JPEG or PNG)")
    if len(data) > max_bytes:
        raise HTTPError(413, f"image upload of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    if not data:
        raise HTTPError(400, "the image field is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise HTTPError(413, f"image of {w} x {h} pixels exceeds the limit of {max_pixels} pixels")
            if im.format not in ("JPEG", "PNG"):
                raise HTTPError(415, f"image format {im.format} is not supported (JPEG or PNG)")
            im.load()
            arr = np.asarray(im.convert("RGB"))
    except HTTPError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise HTTPError(400, f"the image cannot be decoded: {type(e).__name__}: {e}") from e
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _rles(masks: np.ndarray) -> list[dict[str, Any]]:
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    enc = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in enc]


def segmentation_json(seg: Any) -> dict[str, Any]:
    """JSON of one :class:`tusss.pipeline.Segmentation` (module docstring); RLEs as pycocotools writes them."""
    ms = seg.masks
    masks = []
    for m, rle in enumerate(_rles(ms.masks)):
        lab = int(seg.labels[m])
        masks.append({"id": m, "rle": rle, "bbox_xywh": [int(x) for x in ms.bbox[m]], "area": int(ms.area[m]),
                      "level": int(ms.level[m]), "predicted_iou": float(ms.predicted_iou[m]),
                      "stability": float(ms.stability[m]), "label": lab, "class": seg.class_names[lab],
                      "score": float(seg.conf[m])})
    return {"image_hw": [int(x) for x in ms.image_hw], "class_names": list(seg.class_names),
            "num_masks": len(masks), "masks": masks, "timings": dict(getattr(seg, "timings", {}) or {})}


def _label_png(label_map: np.ndarray) -> bytes:
    from PIL import Image

    from tusss.io import voc_palette

    buf = io.BytesIO()
    if label_map.dtype == np.uint8:
        im = Image.fromarray(label_map, mode="P")
        im.putpalette(voc_palette().reshape(-1).tolist())
    else:  # K > 255: 16-bit grey
        im = Image.fromarray(label_map.astype(np.uint16))
    im.save(buf, format="PNG")
    return buf.getvalue()


def _build_predictor(options: dict[str, Any]) -> Any:
    from tusss.predictor import Predictor

    opts = dict(options)
    engine = opts.pop("engine_dir", None)
    try:
        if engine is not None:
            return Predictor.from_engine(engine, **opts)
        return Predictor.from_pretrained(**opts)
    except TypeError as e:
        raise InputError(f"bad predictor options {sorted(opts)}: {e}") from e


@serve.deployment(name="tusss")
@serve.ingress(api)
class TusssDeployment:
    """One replica: a warm :class:`tusss.Predictor` behind the HTTP routes (module docstring).

    Args:
        predictor: keyword arguments of ``Predictor.from_pretrained`` (or ``engine_dir`` + those of
            ``Predictor.from_engine``); ``device`` defaults to ``cuda`` when the replica has a GPU.
        settings: the :data:`DEPLOYMENT_KEYS` values (batching and limits).
    """

    def __init__(self, predictor: dict[str, Any], settings: dict[str, Any]) -> None:
        import ray

        self.settings = {**DEFAULTS, **settings}
        opts = dict(predictor)
        if ray.get_gpu_ids() and "device" not in opts and "engine_dir" not in opts:
            opts["device"] = "cuda"
        self.ready = False
        self.predictor = _build_predictor(opts)
        self.predictor.warm_up()
        self._segment_batch.set_max_batch_size(int(self.settings["max_batch_size"]))
        self._segment_batch.set_batch_wait_timeout_s(float(self.settings["batch_wait_timeout_s"]))
        self.calls = {"batches": 0, "images": 0}
        self.ready = True

    def check_health(self) -> None:
        """Ray Serve's health check: raise when the replica cannot serve (it is then replaced)."""
        if not self.ready or self.predictor is None:
            raise RuntimeError("tusss replica is not ready")

    def _run_group(self, images: list[np.ndarray], classes: str | None) -> list[Any]:
        try:
            return list(self.predictor.predict_batch(images, classes=classes))
        except Exception:  # one bad image must not fail the others of the batch: retry one by one
            out: list[Any] = []
            for im in images:
                try:
                    out.append(self.predictor.predict(im, classes=classes))
                except Exception as e:
                    out.append(e)
            return out

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _segment_batch(self, items: list[tuple[np.ndarray, str | None]]) -> list[Any]:
        """The batched stage: images of concurrent requests, grouped by their class list."""
        self.calls["batches"] += 1
        self.calls["images"] += len(items)
        out: list[Any] = [None] * len(items)
        groups: dict[str | None, list[int]] = {}
        for k, (_, cls) in enumerate(items):
            groups.setdefault(cls, []).append(k)
        for cls, ks in groups.items():
            res = await asyncio.to_thread(self._run_group, [items[k][0] for k in ks], cls)
            for k, r in zip(ks, res):
                out[k] = r
        return out

    async def _image(self, image: UploadFile) -> np.ndarray:
        data = await image.read(int(self.settings["max_upload_bytes"]) + 1)
        return decode_upload(data, image.content_type, int(self.settings["max_upload_bytes"]),
                             int(self.settings["max_pixels"]))

    @api.post("/v1/segment")
    async def segment(self, image: Annotated[UploadFile, File()], format: Annotated[str, Query()] = "json",
                      classes: Annotated[str | None, Query()] = None) -> Response:
        if format not in ("json", "png"):
            raise HTTPError(400, f"format must be 'json' or 'png', got {format!r}")
        arr = await self._image(image)
        seg = await self._segment_batch((arr, classes))
        if isinstance(seg, InputError):
            raise HTTPError(400, str(seg))
        if isinstance(seg, Exception):
            raise HTTPError(500, f"segmentation failed: {type(seg).__name__}: {seg}")
        if format == "png":
            return Response(_label_png(seg.label_map), media_type="image/png")
        return JSONResponse(segmentation_json(seg))

    @api.post("/v1/embed")
    async def embed(self, image: Annotated[UploadFile, File()]) -> Response:
        arr = await self._image(image)
        try:
            ms, emb = await asyncio.to_thread(self.predictor.embed, arr)
        except InputError as e:
            raise HTTPError(400, str(e)) from e
        buf = io.BytesIO()
        np.save(buf, np.asarray(emb, np.float16))
        return JSONResponse({"image_hw": [int(x) for x in ms.image_hw], "num_masks": len(ms),
                             "masks": [{"id": m, "rle": r, "area": int(ms.area[m]), "level": int(ms.level[m])}
                                       for m, r in enumerate(_rles(ms.masks))],
                             "embeddings_npy_base64": base64.b64encode(buf.getvalue()).decode("ascii"),
                             "dtype": "float16", "shape": [int(s) for s in np.shape(emb)]})

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> Response:
        ok = bool(self.ready and getattr(self.predictor, "ready", True))
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @api.get("/v1/info")
    async def info(self) -> dict[str, Any]:
        ctx = serve.get_replica_context()
        return {**self.predictor.info(), "ray_serve": {"deployment": ctx.deployment, "replica": ctx.replica_tag,
                                                       "pid": os.getpid(), "calls": dict(self.calls),
                                                       **{k: self.settings[k] for k in DEFAULT_KEYS_SHOWN}}}


def _parse_value(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def build_app(args: dict[str, Any]) -> Any:
    """A bound Ray Serve application (``serve run tusss.distributed.serve:build_app key=value ...``).

    Keys: :data:`DEPLOYMENT_KEYS` (``num_replicas``, ``num_cpus`` / ``num_gpus`` per replica, ``max_batch_size``,
    ``batch_wait_timeout_s``, ``max_upload_bytes``, ``max_pixels``, ``health_check_period_s``,
    ``max_ongoing_requests``); every other key is a ``Predictor.from_pretrained`` argument (``sam``,
    ``checkpoint``, ``clip``, ``weights``, ``vocabulary`` | ``classes`` | ``glcc``, ``mask_options`` (a dict
    or JSON), ``device``, ``seed`` ...) or, with ``engine_dir``, a ``Predictor.from_engine`` one. String values
    are parsed as JSON when they are JSON (``mask_options={"points_per_side": 8}``). Without a classifier key,
    ``vocabulary=voc21``.
    """
    settings: dict[str, Any] = {}
    predictor: dict[str, Any] = {}
    for k, v in dict(args).items():
        if k in DEPLOYMENT_KEYS:
            try:
                settings[k] = DEPLOYMENT_KEYS[k](_parse_value(v))
            except (TypeError, ValueError) as e:
                raise InputError(f"{k}={v!r} is not a valid {DEPLOYMENT_KEYS[k].__name__}") from e
        else:
            predictor[k] = v if k == "classes" else _parse_value(v)
    for k in ("num_replicas", "max_batch_size", "max_upload_bytes", "max_pixels"):
        if k in settings and settings[k] < 1:
            raise InputError(f"{k} must be >= 1, got {settings[k]}")
    if not any(k in predictor for k in ("vocabulary", "classes", "glcc")):
        predictor["vocabulary"] = "voc21"
    s = {**DEFAULTS, **settings}
    dep = TusssDeployment.options(
        num_replicas=int(s["num_replicas"]),
        ray_actor_options={"num_cpus": float(s["num_cpus"]), "num_gpus": float(s["num_gpus"])},
        health_check_period_s=float(s["health_check_period_s"]),
        max_ongoing_requests=int(s["max_ongoing_requests"]),
    )
    return dep.bind(predictor, settings)


def run(options: dict[str, Any], host: str = "127.0.0.1", port: int = 8000, blocking: bool = False,
        route_prefix: str = "/") -> Any:
    """Start Serve's HTTP proxy on ``host:port`` (Ray must be initialised, e.g. by
    :func:`tusss.distributed.init_ray`) and deploy :func:`build_app` (``options``); returns the handle."""
    serve.start(http_options={"host": host, "port": int(port)})
    return serve.run(build_app(options), blocking=blocking, route_prefix=route_prefix, name="tusss")


#: ``serve run tusss.distributed.serve:app``: options as JSON in $TUSSS_SERVE_OPTIONS (default: vit_h, ViT-B-16,
#: official weights, voc21).
app = build_app(json.loads(os.environ.get("TUSSS_SERVE_OPTIONS", "{}") or "{}"))
