"""``tusss serve``: an HTTP inference service on :class:`tusss.Predictor` (FastAPI + uvicorn; extra ``[serve]``).

Endpoints:

* ``POST /v1/segment`` (multipart field ``image``, JPEG or PNG; ``?format=json`` (default) | ``png``;
  ``?classes=a,b,c`` overrides the class list of a text classifier): JSON with ``image`` {height, width},
  ``class_names``, ``timings`` and per mask ``id``, ``segmentation`` (COCO RLE exactly as pycocotools writes it:
  ``{"size": [H, W], "counts": "<compressed string>"}``), ``bbox`` XYWH, ``area``, ``level``, ``predicted_iou``,
  ``stability``, ``label``, ``class``, ``score``; or the label-map PNG (8-bit grey; 16-bit when K > 255).
* ``POST /v1/embed`` (``image``; ``?format=json`` | ``npy``): the masks (as above, without labels) and their
  embeddings as float16 ``.npy`` bytes (base64 in JSON; the raw body with ``format=npy``).
* ``GET /healthz`` (process alive), ``GET /readyz`` (200 once models, graphs and index are loaded and one
  warm-up image ran; 503 before), ``GET /metrics`` (Prometheus text: ``tusss_requests_total`` by endpoint and
  status, ``tusss_request_seconds`` and ``tusss_stage_seconds`` histograms, ``tusss_batch_size``,
  ``tusss_queue_depth``, ``tusss_queue_wait_seconds``), ``GET /v1/info`` (models, weights ids, backend,
  providers, precision, classifier, versions, limits).

Heavy stages are micro-batched across concurrent requests (:mod:`tusss.serve.batcher`: ``--max-batch``,
``--max-wait-ms``); a full queue (``--max-queue``) answers 503 with ``Retry-After``. Limits: upload size
(``--max-upload-mb``, 413), pixel count read from the image header before decoding (``--max-pixels``, 413),
content type (415). Every bad request gets a 4xx JSON ``{"error": "..."}`` naming the problem; SIGTERM
(uvicorn) stops accepting, finishes the requests in flight and exits 0.

Testing hook: ``TUSSS_SERVE_PREDICTOR_FACTORY=module:function`` makes ``tusss serve`` build its predictor by
calling that function with no arguments instead of from the model options (used by the tests to serve a
deterministic fake SAM); it is not meant for production use.
"""

from __future__ import annotations

from .app import ServeConfig, create_app, decode_upload, rle_encode
from .runner import FACTORY_ENV, load_factory, serve

__all__ = ["ServeConfig", "create_app", "decode_upload", "rle_encode", "serve", "load_factory", "FACTORY_ENV"]
