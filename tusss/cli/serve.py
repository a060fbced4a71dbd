"""``tusss serve``: the HTTP inference service (:mod:`tusss.serve`) on a :class:`tusss.Predictor`.

    tusss serve --sam vit_tiny --checkpoint random --clip tusss-tiny --weights random --classes cat,dog,sofa \\
                --host 127.0.0.1 --port 8000
    tusss serve --engine ENGINE_DIR --vocabulary voc21
    tusss serve --sam vit_h --clip ViT-B-16 --glcc runs/voc-weak/glcc
"""

from __future__ import annotations

import argparse
from typing import Any

from tusss.cli.common import add_clip_args, add_sam_args, parse_opts
from tusss.errors import InputError


def add_classifier_args(p: argparse.ArgumentParser) -> None:
    """``--vocabulary | --classes | --glcc`` and the text-classifier options."""
    g = p.add_argument_group("classifier (one of)")
    g.add_argument("--vocabulary", help="named vocabulary: voc21, voc, voc20, coco-object, coco-stuff, cityscapes")
    g.add_argument("--classes", help="comma-separated class names ('background' is prepended unless "
                   "--no-background)")
    g.add_argument("--glcc", help="a fitted GLCC directory (tusss fit): full / semi / weak classifier")
    g.add_argument("--templates", help="text templates (vild, origami, imagenet)")
    g.add_argument("--no-background", action="store_true", help="custom classes: no implicit 'background'")
    g.add_argument("--bg-alpha", type=float, default=1.0, help="explicit background: s_bg ** alpha (default 1)")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--engine", help="engine directory (tusss-engine build): the models it describes run on its "
                   "graphs (--sam/--clip/--checkpoint/--weights are then taken from its manifest)")
    g.add_argument("--backend", choices=("onnxruntime", "tensorrt", "inductor", "torch"),
                   help="with --engine: the backend (default the manifest's; torch = same weights, eager PyTorch)")


def predictor_from_args(args: argparse.Namespace) -> Any:
    """The :class:`tusss.Predictor` of the model / engine / classifier options."""
    from tusss.predictor import Predictor

    chosen = [n for n in ("vocabulary", "classes", "glcc") if getattr(args, n, None)]
    if len(chosen) != 1:
        raise InputError("give exactly one of --vocabulary, --classes or --glcc"
                         + (f" (got {', '.join('--' + c for c in chosen)})" if chosen else ""))
    text: dict[str, Any] = {}
    if not args.glcc:
        text = {"templates": args.templates, "background": not args.no_background, "bg_alpha": args.bg_alpha}
    kw = {"vocabulary": args.vocabulary, "classes": args.classes, "glcc": args.glcc}
    mask_opts = parse_opts(args.sam_opt, "--sam-opt")
    if args.engine:
        return Predictor.from_engine(args.engine, backend=args.backend, mask_options=mask_opts or None, **kw, **text)
    if args.backend:
        raise InputError("--backend needs --engine")
    return Predictor.from_pretrained(sam=args.sam, checkpoint=args.checkpoint, clip=args.clip, weights=args.weights,
                                     mask_options=mask_opts or None, device=args.device, mask_preset=args.preset,
                                     clip_options=parse_opts(args.clip_opt, "--clip-opt") or None,
                                     clip_preset=args.clip_preset, seed=args.seed, **kw, **text)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import os

    try:
        from tusss.serve import FACTORY_ENV, ServeConfig, serve
    except ImportError as e:
        raise InputError(str(e)) from e
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                      max_upload_bytes=int(args.max_upload_mb * (1 << 20)), max_pixels=args.max_pixels,
                      warmup=not args.no_warmup)
    for n, v in (("--max-batch", cfg.max_batch), ("--max-queue", cfg.max_queue), ("--max-pixels", cfg.max_pixels),
                 ("--max-upload-mb", cfg.max_upload_bytes)):
        if v < 1:
            raise InputError(f"{n} must be >= 1, got {v}")
    if not os.environ.get(FACTORY_ENV):  # fail fast on bad options, before the socket opens
        chosen = [n for n in ("vocabulary", "classes", "glcc") if getattr(args, n, None)]
        if len(chosen) != 1:
            raise InputError("give exactly one of --vocabulary, --classes or --glcc")
    serve(lambda: predictor_from_args(args), host=args.host, port=args.port, config=cfg, log_level=args.log_level)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``tusss`` command."""
    p = subparsers.add_parser("serve", help="HTTP inference service (needs the [serve] extra)",
                              description="Serve POST /v1/segment and /v1/embed, GET /healthz /readyz /metrics "
                              "/v1/info with FastAPI + uvicorn; heavy stages are micro-batched across concurrent "
                              "requests. SIGTERM finishes the requests in flight and exits.")  # fmt: skip
    add_sam_args(p)
    add_clip_args(p)
    add_classifier_args(p)
    add_engine_args(p)
    g = p.add_argument_group("service")
    g.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    g.add_argument("--max-batch", type=int, default=8, help="most requests per heavy-stage batch (1 = off)")
    g.add_argument("--max-wait-ms", type=float, default=10.0, help="wait for more requests to batch (default 10)")
    g.add_argument("--max-queue", type=int, default=64, help="most waiting requests; beyond: 503 + Retry-After")
    g.add_argument("--max-upload-mb", type=float, default=20.0, help="largest image upload in MiB (default 20)")
    g.add_argument("--max-pixels", type=int, default=4096 * 4096, help="largest width x height (default 4096^2)")
    g.add_argument("--no-warmup", action="store_true", help="ready without running a warm-up image")
    g.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="torch seed for random weights (default 0)")
    p.set_defaults(func=cmd_serve)


# ---------------------------------------------------------------------------------------------- segment hooks
def add_segment_predictor_args(p: argparse.ArgumentParser) -> None:
    """``tusss segment --glcc DIR --engine DIR --backend B`` (registered by :mod:`tusss.cli.ov`)."""
    g = p.add_argument_group("predictor (tusss.Predictor)")
    g.add_argument("--glcc", help="classify with a fitted GLCC directory (tusss fit: full / semi / weak) instead of "
                   "text classes; its embedder identity must match --clip/--weights/--clip-preset")
    g.add_argument("--engine", help="run SAM and DBA-CLIP on this engine directory (tusss-engine build); the models "
                   "are rebuilt from its manifest (--sam/--checkpoint/--clip/--weights are ignored)")
    g.add_argument("--backend", choices=("onnxruntime", "tensorrt", "inductor", "torch"),
                   help="with --engine: backend (default the manifest's; torch = same weights in eager PyTorch)")


class PredictorSegmenter:
    """What ``tusss segment`` needs of a segmenter (``segment(image, masks)``, ``class_set``, ``fill``), on a
    :class:`tusss.Predictor`."""

    class _Set:
        def __init__(self, source: str, templates: Any, bg_mode: str) -> None:
            self.source, self.templates, self.bg_mode = source, templates, bg_mode

    def __init__(self, predictor: Any, glcc: str | None) -> None:
        self.predictor = predictor
        c = predictor.classifier
        if glcc:
            self.class_set = self._Set(f"glcc:{glcc}", "", "glcc-background" if c.has_background else "none")
        else:
            cs = c._seg.class_set
            self.class_set = self._Set(cs.source, cs.templates, cs.bg_mode)
        self.fill = c.fill

    def segment(self, image: Any, masks: Any = None) -> Any:
        return self.predictor.predict(image, masks=masks)


def segment_predictor(args: argparse.Namespace, cls_kw: dict[str, Any]) -> PredictorSegmenter:
    """The segmenter of ``tusss segment --glcc / --engine``."""
    from tusss.predictor import Predictor

    if args.glcc and cls_kw:
        raise InputError("--glcc classifies with the GLCC's own classes: drop --vocabulary / --classes")
    kw = {"glcc": args.glcc} if args.glcc else dict(cls_kw)
    if not args.glcc:
        kw.update(templates=args.templates, background=not args.no_background, bg_alpha=args.bg_alpha,
                  bg_pow=args.bg_pow, fill=args.fill)
    mask_opts = parse_opts(args.sam_opt, "--sam-opt") or None
    if args.engine:
        pred = Predictor.from_engine(args.engine, backend=args.backend, mask_options=mask_opts, **kw)
    else:
        if args.backend:
            raise InputError("--backend needs --engine")
        pred = Predictor.from_pretrained(sam=args.sam, checkpoint=args.checkpoint, clip=args.clip,
                                         weights=args.weights, mask_options=mask_opts, device=args.device,
                                         clip_options=parse_opts(args.clip_opt, "--clip-opt") or None,
                                         mask_preset=args.preset, clip_preset=args.clip_preset, seed=args.seed, **kw)
    return PredictorSegmenter(pred, args.glcc)
