"""Replicated serving on Ray Serve: the ``tusss serve`` service as a deployment of ``tusss.Predictor``.

Each replica holds one warm :class:`tusss.Predictor`. Concurrent requests to a replica are grouped by
``@serve.batch`` (``max_batch_size``, ``batch_wait_timeout_s``; this replaces the in-process micro-batcher of
``tusss serve``) and run through :meth:`Predictor.predict_batch` / ``embed_batch``, so the SAM encoder and the
DBA-CLIP windows of a batch run together; a group that fails is retried image by image, so one bad image never
fails the others. Ray Serve calls :meth:`TusssDeployment.check_health` every ``health_check_period_s`` and
replaces a replica that fails it; Ray Serve routes requests across ``num_replicas`` replicas.

The routes and answers are those of ``tusss serve`` (:mod:`tusss.serve.app`: the same upload checks, JSON rows,
PNG and ``.npy`` encoders, error bodies)::

    POST /v1/segment   multipart ``image`` (JPEG/PNG); ?format=json|png; ?classes=a,b (text classifier only)
    POST /v1/embed     multipart ``image``; ?format=json (base64 .npy float16) | npy
    GET  /healthz      alive                GET /readyz    models loaded, one warm-up image run
    GET  /metrics      Prometheus text of this replica (requests, latency, stage times, batch sizes)
    GET  /v1/info      models, weights ids, backend, classifier, versions, batching, replica id and call counts

Bad input answers 4xx with ``{"error": ...}`` naming the problem; the replica keeps serving.

Start it with ``serve run tusss.distributed.serve:build_app sam=vit_tiny checkpoint=random clip=tusss-tiny
weights=random classes=cat,dog`` (key=value pairs: see :func:`build_app`), ``serve run
tusss.distributed.serve:app`` (options as JSON in ``$TUSSS_SERVE_OPTIONS``), or :func:`run` from Python.
Ray, FastAPI and the ``[serve]`` extra are imported with this module: import it only to serve on Ray.
"""

# no `from __future__ import annotations`: FastAPI must see the route annotations as objects (Ray Serve's
# ingress rebuilds the routes and cannot resolve string annotations)
import asyncio
import base64
import json
import os
import time
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Query, UploadFile
from fastapi.responses import JSONResponse, Response
from ray import serve

import tusss
from tusss.errors import InputError, TusssError
from tusss.serve.app import (
    ServeConfig,
    UploadError,
    decode_upload,
    error_response,
    install_error_handlers,
    parse_classes,
)
from tusss.serve.encode import mask_rows, npy_bytes, png_bytes
from tusss.serve.metrics import ServiceMetrics

__all__ = ["TusssDeployment", "api", "app", "build_app", "deployment", "run", "segmentation_json",
           "DEPLOYMENT_KEYS"]

#: build_app keys that configure the deployment (everything else goes to Predictor.from_pretrained/from_engine).
DEPLOYMENT_KEYS = {"num_replicas": int, "num_cpus": float, "num_gpus": float, "max_batch_size": int,
                   "batch_wait_timeout_s": float, "max_upload_bytes": int, "max_pixels": int,
                   "health_check_period_s": float, "max_ongoing_requests": int}
DEFAULTS = {"num_replicas": 1, "num_cpus": 1.0, "num_gpus": 0.0, "max_batch_size": 8, "batch_wait_timeout_s": 0.01,
            "max_upload_bytes": ServeConfig.max_upload_bytes, "max_pixels": ServeConfig.max_pixels,
            "health_check_period_s": 10.0, "max_ongoing_requests": 64}

api = FastAPI(title="tusss segmentation service (Ray Serve)", version=tusss.__version__)


_err = error_response
install_error_handlers(api)


def segmentation_json(seg: Any) -> dict[str, Any]:
    """The ``/v1/segment`` JSON of one :class:`tusss.pipeline.Segmentation`, as ``tusss serve`` answers it."""
    h, w = seg.masks.image_hw
    return {"image": {"height": h, "width": w}, "class_names": list(seg.class_names),
            "masks": mask_rows(seg.masks, {"labels": seg.labels, "conf": seg.conf}, seg.class_names),
            "timings": {k: float(v) for k, v in (seg.timings or {}).items()}}


def _build_predictor(options: dict[str, Any] | Callable[[], Any]) -> Any:
    from tusss.predictor import Predictor

    if callable(options):  # a picklable zero-argument factory (e.g. the CLI's predictor_from_args)
        return options()
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
    """One replica: a warm :class:`tusss.Predictor` behind the routes of ``tusss serve`` (module docstring).

    Args:
        predictor: keyword arguments of ``Predictor.from_pretrained`` (or ``engine_dir`` + those of
            ``Predictor.from_engine``; ``device`` defaults to ``cuda`` when the replica has a GPU), or a picklable
            zero-argument factory returning the predictor (called in the replica).
        settings: the :data:`DEPLOYMENT_KEYS` values (batching and limits).
    """

    def __init__(self, predictor: dict[str, Any] | Callable[[], Any], settings: dict[str, Any]) -> None:
        import ray

        self.settings = {**DEFAULTS, **settings}
        self.cfg = ServeConfig(max_batch=int(self.settings["max_batch_size"]),
                               max_wait_ms=1000.0 * float(self.settings["batch_wait_timeout_s"]),
                               max_upload_bytes=int(self.settings["max_upload_bytes"]),
                               max_pixels=int(self.settings["max_pixels"]))
        opts = predictor if callable(predictor) else dict(predictor)
        if not callable(opts) and ray.get_gpu_ids() and "device" not in opts and "engine_dir" not in opts:
            opts["device"] = "cuda"
        self.ready = False
        self.metrics = ServiceMetrics()
        self.calls = {"batches": 0, "images": 0}
        self.predictor = _build_predictor(opts)
        self.predictor.warm_up()
        for fn in (self._segment_batch, self._embed_batch):
            fn.set_max_batch_size(self.cfg.max_batch)
            fn.set_batch_wait_timeout_s(float(self.settings["batch_wait_timeout_s"]))
        self.ready = True
        self.metrics.ready.set(1)

    def check_health(self) -> None:
        """Ray Serve's health check: raise when the replica cannot serve (it is then replaced)."""
        if not self.ready or self.predictor is None:
            raise RuntimeError("tusss replica is not ready")

    # ------------------------------------------------------------------ batched model calls
    def _run(self, kind: str, images: list[np.ndarray], classes: list[str] | None) -> list[Any]:
        """One model call for a group; on an error, each image alone (one bad image must not fail the rest)."""
        p = self.predictor
        call = (lambda ims: p.predict_batch(ims, classes=classes)) if kind == "segment" else p.embed_batch
        try:
            res = list(call(images))
        except Exception:
            res = []
            for im in images:
                try:
                    res.extend(call([im]))
                except Exception as e:
                    res.append(e)
        self.metrics.batch.observe(len(images))
        t = getattr(res[0], "timings", None) if res else None
        for stage in ("masks", "embed", "classify", "paint"):
            if t and stage in t:
                self.metrics.stage.labels(stage).observe(float(t[stage]))
        return res

    async def _grouped(self, kind: str, items: list[tuple[np.ndarray, Any]]) -> list[Any]:
        self.calls["batches"] += 1
        self.calls["images"] += len(items)
        out: list[Any] = [None] * len(items)
        groups: dict[Any, list[int]] = {}
        for k, (_, cls) in enumerate(items):
            groups.setdefault(None if cls is None else tuple(cls), []).append(k)
        for cls, ks in groups.items():
            res = await asyncio.to_thread(self._run, kind, [items[k][0] for k in ks], None if cls is None else
                                          list(cls))
            for k, r in zip(ks, res):
                out[k] = r
        return out

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _segment_batch(self, items: list[tuple[np.ndarray, Any]]) -> list[Any]:
        """Images of concurrent /v1/segment requests -> one ``predict_batch`` per class list."""
        return await self._grouped("segment", items)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _embed_batch(self, items: list[tuple[np.ndarray, Any]]) -> list[Any]:
        """Images of concurrent /v1/embed requests -> one ``embed_batch``."""
        return await self._grouped("embed", items)

    async def _job(self, path: str, kind: str, image: UploadFile, classes: Any) -> Any:
        t0 = time.perf_counter()
        data = await image.read(self.cfg.max_upload_bytes + 1)
        try:
            arr = await asyncio.to_thread(decode_upload, data, image.content_type, self.cfg)
        except UploadError as e:
            return self._count(path, _err(e.status, e.message), t0)
        batch = self._segment_batch if kind == "segment" else self._embed_batch
        res = await batch((arr, classes))
        if isinstance(res, TusssError):
            return self._count(path, _err(400, str(res)), t0)
        if isinstance(res, Exception):
            return self._count(path, _err(500, f"internal error: {type(res).__name__}"), t0)
        return res, t0

    def _count(self, path: str, resp: Response, t0: float) -> Response:
        self.metrics.requests.labels(path, str(resp.status_code)).inc()
        self.metrics.latency.labels(path).observe(time.perf_counter() - t0)
        return resp

    # ------------------------------------------------------------------ routes (those of tusss serve)
    @api.post("/v1/segment")
    async def segment(self, image: Annotated[UploadFile, File()], format: Annotated[str, Query()] = "json",  # noqa: A002
                      classes: Annotated[str | None, Query()] = None) -> Response:
        t0 = time.perf_counter()
        if format not in ("json", "png"):
            return self._count("/v1/segment", _err(400, f"format must be 'json' or 'png', got {format!r}"), t0)
        try:
            names = parse_classes(classes)
            if names is not None:
                self.predictor.classifier_for(names)  # unknown / bad list -> 400 before batching
        except (UploadError, InputError) as e:
            return self._count("/v1/segment", _err(getattr(e, "status", 400), getattr(e, "message", str(e))), t0)
        res = await self._job("/v1/segment", "segment", image, names)
        if isinstance(res, Response):
            return res
        seg, t0 = res
        if format == "png":
            resp: Response = Response(png_bytes(seg.label_map), media_type="image/png",
                                      headers={"X-Num-Masks": str(len(seg.labels))})
        else:
            resp = JSONResponse(segmentation_json(seg))
        return self._count("/v1/segment", resp, t0)

    @api.post("/v1/embed")
    async def embed(self, image: Annotated[UploadFile, File()], format: Annotated[str, Query()] = "json") -> Response:  # noqa: A002
        t0 = time.perf_counter()
        if format not in ("json", "npy"):
            return self._count("/v1/embed", _err(400, f"format must be 'json' (base64 .npy) or 'npy', got "
                                                      f"{format!r}"), t0)
        res = await self._job("/v1/embed", "embed", image, None)
        if isinstance(res, Response):
            return res
        (ms, emb), t0 = res
        e16 = np.ascontiguousarray(emb, dtype=np.float16)
        if format == "npy":
            return self._count("/v1/embed", Response(npy_bytes(e16), media_type="application/x-npy",
                                                     headers={"X-Num-Masks": str(len(ms))}), t0)
        h, w = ms.image_hw
        return self._count("/v1/embed", JSONResponse({
            "image": {"height": h, "width": w}, "masks": mask_rows(ms),
            "embeddings": {"dtype": "float16", "shape": list(e16.shape), "encoding": "npy+base64",
                           "data": base64.b64encode(npy_bytes(e16)).decode("ascii")}}), t0)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> Response:
        if self.ready:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "error": "loading models / warming up"}, status_code=503)

    @api.get("/metrics")
    async def prom(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @api.get("/v1/info")
    async def info(self) -> dict[str, Any]:
        ctx = serve.get_replica_context()
        c = self.cfg
        return {**self.predictor.info(), "ready": self.ready,
                "serve": {"max_batch": c.max_batch, "max_wait_ms": c.max_wait_ms, "max_queue": None,
                          "max_upload_bytes": c.max_upload_bytes, "max_pixels": c.max_pixels},
                "ray_serve": {"deployment": ctx.deployment, "replica": ctx.replica_tag, "pid": os.getpid(),
                              "calls": dict(self.calls)}}


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
    return deployment(predictor, settings)


def deployment(predictor: dict[str, Any] | Callable[[], Any], settings: dict[str, Any] | None = None) -> Any:
    """The bound application of :class:`TusssDeployment` for ``predictor`` (options or a factory) and
    ``settings`` (:data:`DEPLOYMENT_KEYS`, already typed)."""
    settings = dict(settings or {})
    unknown = set(settings) - set(DEPLOYMENT_KEYS)
    if unknown:
        raise InputError(f"unknown deployment settings {sorted(unknown)}; known: {sorted(DEPLOYMENT_KEYS)}")
    s = {**DEFAULTS, **settings}
    dep = TusssDeployment.options(
        num_replicas=int(s["num_replicas"]),
        ray_actor_options={"num_cpus": float(s["num_cpus"]), "num_gpus": float(s["num_gpus"])},
        health_check_period_s=float(s["health_check_period_s"]),
        max_ongoing_requests=int(s["max_ongoing_requests"]),
    )
    return dep.bind(predictor, settings)


def run(options: dict[str, Any] | Callable[[], Any], host: str = "127.0.0.1", port: int = 8000,
        blocking: bool = False, route_prefix: str = "/", settings: dict[str, Any] | None = None) -> Any:
    """Start Serve's HTTP proxy on ``host:port`` (Ray must be initialised, e.g. by
    :func:`tusss.distributed.init_ray`) and deploy the service; returns the deployment handle.

    Args:
        options: :func:`build_app` key/values (predictor options and deployment settings), or a predictor
            factory (then ``settings`` holds the deployment settings).
    """
    serve.start(http_options={"host": host, "port": int(port)})
    target = deployment(options, settings) if callable(options) else build_app({**options, **(settings or {})})
    return serve.run(target, blocking=blocking, route_prefix=route_prefix, name="tusss")


#: ``serve run tusss.distributed.serve:app``: options as JSON in $TUSSS_SERVE_OPTIONS (default: vit_h, ViT-B-16,
#: official weights, voc21).
app = build_app(json.loads(os.environ.get("TUSSS_SERVE_OPTIONS", "{}") or "{}"))
