"""``tusss masks | segment | eval``: the open-vocabulary commands.

::

    tusss masks   IMAGE_OR_DIR... | --dataset NAME --root DIR [--split S]  --cache-dir DIR
                  [--sam vit_h] [--checkpoint official|PATH|random] [--preset tuss] [--sam-opt KEY=VALUE]
    tusss segment IMAGE_OR_DIR... | --dataset NAME --root DIR [--split S]
                  (--vocabulary voc21 | --classes "cat,dog" | --classes-file F) --out DIR
                  [--weights openai|PATH|random] [--clip ViT-B-16] [--mask-cache DIR] ...
    tusss eval    --dataset NAME --root DIR [--split S] --pred DIR [--mask-cache DIR] [--out metrics.json]

``tusss segment`` writes per image ``OUT/labels/{id}.png`` (palette label PNG), ``OUT/overlays/{id}.png``
(colour overlay) and ``OUT/masks/{id}.json`` (per-mask labels, confidences and scores); an image that cannot
be read or segmented is reported, skipped and listed at the end (exit status 1), the rest of the batch goes on.
``tusss eval`` computes the mIoU of the label PNGs (or of labels re-painted from the JSONs and the cached
masks) and, when the mask cache is given, the mask F1 of docs/reference-code.md §7 (:func:`tusss.evaluation.evaluate`).
``--checkpoint random`` / ``--weights random`` build the networks with random weights (seeded by ``--seed``),
for tests and dry runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tusss.cli.common import (
    ImageSource,
    add_clip_args,
    add_common,
    add_sam_args,
    add_source_args,
    build_clip,
    build_generator,
    progress,
)
from tusss.cli.faults import add_fault_args
from tusss.errors import CorruptFileError, InputError
from tusss.persist import FailureLog, atomic_write_text, fault_point, remove_stale_temps

__all__ = ["register"]


# ---------------------------------------------------------------------------------------------- masks
def cmd_masks(args: argparse.Namespace) -> int:
    from tusss.masks.cache import MaskCache, cache_masks, check_manifest, write_manifest
    src = ImageSource(args)
    gen = build_generator(args)
    cache = MaskCache.for_generator(args.cache_dir, gen, overwrite=args.overwrite)
    check_manifest(args.cache_dir, gen, args.overwrite)
    remove_stale_temps(args.cache_dir)  # hidden leftovers of a killed run
    log = FailureLog(args.cache_dir, "masks", fail_fast=args.fail_fast)

    def loader(i: str):
        def load() -> np.ndarray:
            try:
                return src.image(i)
            except CorruptFileError as e:  # cache_masks's keep-going mode collects InputErrors
                raise InputError(str(e)) from e

        return load

    with warnings.catch_warnings():  # failures are listed below
        warnings.filterwarnings("ignore", message="cache_masks: ")
        res = cache_masks(gen, [(i, loader(i)) for i in src.ids], cache, progress=not args.no_progress,
                          on_error="collect", on_failure=log.record)  # fmt: skip
    write_manifest(args.cache_dir, gen)
    log.close()
    print(f"masks: {len(res['generated'])} generated, {len(res['skipped'])} already cached, "
          f"{len(res['failed'])} failed -> {args.cache_dir}{log.summary()}")  # fmt: skip
    for i, msg in res["failed"].items():
        print(f"  failed {i}: {msg}", file=sys.stderr)
    return 1 if res["failed"] else 0


# ---------------------------------------------------------------------------------------------- segment
def _classes_from_args(args: argparse.Namespace) -> dict[str, Any]:
    given = [x for x in (args.vocabulary, args.classes, args.classes_file) if x]
    if len(given) != 1:
        raise InputError("give exactly one of --vocabulary, --classes or --classes-file")
    if args.classes_file:
        p = Path(args.classes_file)
        if not p.is_file():
            from tusss.io import MissingFileError

            raise MissingFileError(f"classes file {str(p)!r} does not exist")
        names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        return {"classes": names}
    if args.vocabulary:
        return {"vocabulary": args.vocabulary}
    return {"classes": args.classes}


def cmd_segment(args: argparse.Namespace) -> int:
    from tusss.masks.cache import MaskCache, check_manifest, write_manifest
    from tusss.pipeline import OVSegmenter, resolve_class_set

    cls_kw = {} if args.glcc and not (args.vocabulary or args.classes or args.classes_file) else \
        _classes_from_args(args)
    templates = args.templates
    if cls_kw:
        resolve_class_set(templates=templates, background=not args.no_background, **cls_kw)  # fail before loading
    src = ImageSource(args)
    out = Path(args.out)
    if args.glcc or args.engine:  # tusss.Predictor: GLCC classifier and/or engine backend (tusss.cli.serve)
        from tusss.cli.serve import segment_predictor

        seg = segment_predictor(args, cls_kw)
        gen = seg.predictor.mask_generator
    else:
        gen = build_generator(args)
        clip = build_clip(args.clip, args.weights, args.clip_preset, args.device, args.clip_opt, args.seed)
        seg = OVSegmenter(gen, clip, templates=templates, background=not args.no_background, bg_alpha=args.bg_alpha,
                          bg_pow=args.bg_pow, fill=args.fill, **cls_kw)  # fmt: skip
    cache = None
    if args.mask_cache:
        cache = MaskCache.for_generator(args.mask_cache, gen)
        check_manifest(args.mask_cache, gen)
    n_done = n_skip = 0
    remove_stale_temps(out)  # hidden leftovers of a killed run
    log = FailureLog(out, "segment", fail_fast=args.fail_fast)
    failed = log.failures
    fault_point("segment")  # test hook (TUSSS_FAULT_KILL_AFTER)
    for i in progress(src.ids, len(src.ids), "segment", not args.no_progress):
        if args.skip_existing and _outputs(out, i)[0].is_file() and _outputs(out, i)[2].is_file():
            n_skip += 1
            continue
        # one unreadable / unusable image never stops the batch: recorded in OUT/failures.jsonl
        ok, _ = log.attempt(i, _segment_one, args, src, i, seg, gen, cache, out)
        if not ok:
            print(f"segment: skipped {i}: {failed[i]}", file=sys.stderr)
            continue
        n_done += 1
        fault_point("segment")
    if cache is not None:
        write_manifest(args.mask_cache, gen)
    log.close()
    tail = f", {len(failed)} failed" if failed else ""
    print(f"segment: {n_done} image(s) written, {n_skip} skipped{tail} -> {out}{log.summary()}")
    if failed:
        print(f"segment: {len(failed)} image(s) failed:", file=sys.stderr)
        for i, msg in failed.items():
            print(f"  failed {i}: {msg}", file=sys.stderr)
    return 1 if failed else 0


def _outputs(out: Path, i: str) -> tuple[Path, Path, Path]:
    """Label PNG, overlay PNG and per-mask JSON of image ``i``."""
    return out / "labels" / f"{i}.png", out / "overlays" / f"{i}.png", out / "masks" / f"{i}.json"


def _segment_one(args: argparse.Namespace, src: ImageSource, i: str, seg: Any, gen: Any, cache: Any,
                 out: Path) -> None:  # fmt: skip
    """Segment image ``i`` and write its three outputs."""
    from tusss.io import overlay, write_image, write_label_png

    lab_p, ov_p, js_p = _outputs(out, i)
    image = src.image(i)
    try:
        masks = cache.get(i) if cache is not None else None
    except CorruptFileError as e:  # a damaged cache file is regenerated and replaced, as `tusss masks` does
        print(f"warning: {i}: {e}; regenerating it", file=sys.stderr)
        masks = None
    if masks is None:
        masks = gen.generate(image)
        if cache is not None:
            cache.put(i, masks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = seg.segment(image, masks)
    for w in caught:
        print(f"warning: {i}: {w.message}", file=sys.stderr)
    js = res.to_json(include_scores=not args.no_scores)
    js = {"id": i, "image": str(src.path(i)), "source": seg.class_set.source,
          "templates": seg.class_set.templates if isinstance(seg.class_set.templates, str)
          else list(seg.class_set.templates), "bg_mode": seg.class_set.bg_mode, "fill": seg.fill,
          "mask_config_hash": gen.config_hash, **js}  # fmt: skip
    # each file atomic; the JSON last (--skip-existing takes an image with label PNG + JSON as done)
    write_label_png(lab_p, res.label_map)
    write_image(ov_p, overlay(image, res.label_map, alpha=args.overlay_alpha))
    atomic_write_text(js_p, json.dumps(js))


# ---------------------------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    from tusss.data.datasets import get_dataset
    from tusss.evaluation import evaluate, json_clean
    from tusss.masks.cache import open_mask_cache

    ds = get_dataset(args.dataset, args.root, args.split, ids_file=args.ids_file)
    cache = open_mask_cache(args.mask_cache) if args.mask_cache else None
    ids = ds.ids[: args.limit] if args.limit else None
    res = evaluate(ds, args.pred, cache, ids=ids, progress=not args.no_progress)

    def fmt(x: float | None) -> str:
        return "nan" if x is None or not np.isfinite(x) else f"{100 * x:.2f}"

    line = f"{ds.name} {ds.split}: {res['num_images']} images  mIoU {fmt(res['mIoU'])}"
    if "mask" in res:
        m = res["mask"]
        line += (f"  mask F1 {fmt(m['F1'])} (acc {fmt(m['accuracy'])}, P {fmt(m['precision'])}, "
                 f"R {fmt(m['recall'])}, {m['num_masks']} masks)")  # fmt: skip
    print(line)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(json_clean(res), indent=1, allow_nan=False))
    return 0


# ---------------------------------------------------------------------------------------------- parser
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``masks``, ``segment`` and ``eval`` to the ``tusss`` command."""
    p = subparsers.add_parser("masks", help="generate and cache SAM masks (resumable)",
                              description="Generate SAM masks for images or a dataset split and store them in a "
                              "mask cache; images already cached are skipped.")  # fmt: skip
    add_source_args(p)
    add_sam_args(p)
    p.add_argument("--cache-dir", required=True, help="mask cache folder")
    p.add_argument("--overwrite", action="store_true", help="replace masks cached with another configuration")
    p.add_argument("--keep-going", action="store_true",
                   help="skip unreadable images (the default; kept for compatibility)")
    add_fault_args(p)
    add_common(p)
    p.set_defaults(func=cmd_masks)

    p = subparsers.add_parser("segment", help="open-vocabulary segmentation of images",
                              description="Segment images with SAM masks and DBA-CLIP text scores; writes "
                              "OUT/labels/{id}.png, OUT/overlays/{id}.png and OUT/masks/{id}.json. Images that "
                              "cannot be read are reported and skipped (exit status 1).")  # fmt: skip
    add_source_args(p)
    g = p.add_argument_group("classes")
    g.add_argument("--vocabulary", help="named vocabulary: voc21, voc, voc20, coco-object, coco-stuff, cityscapes")
    g.add_argument("--classes", help="comma-separated class names, e.g. 'cat,dog' ('background' is prepended "
                   "unless --no-background)")  # fmt: skip
    g.add_argument("--classes-file", help="class names, one per line (a line may hold comma-separated synonyms)")
    g.add_argument("--templates", help="template set (vild, origami, imagenet) or one template with '{}'")
    g.add_argument("--no-background", action="store_true", help="custom classes: no implicit 'background'")
    g.add_argument("--bg-alpha", type=float, default=1.0, help="explicit background: s_bg ** alpha (default 1)")
    g.add_argument("--bg-pow", type=float, default=1.0, help="dustbin vocabularies: bg = (1 - max) ** p (default 1)")
    g.add_argument("--fill", type=int, default=0, help="label of pixels no mask covers (default 0)")
    add_sam_args(p)
    add_clip_args(p)
    from tusss.cli.serve import add_segment_predictor_args

    add_segment_predictor_args(p)  # --glcc / --engine / --backend
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mask-cache", help="read/write SAM masks in this mask cache")
    p.add_argument("--overlay-alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    p.add_argument("--no-scores", action="store_true", help="leave per-class scores out of the JSON")
    p.add_argument("--skip-existing", action="store_true", help="skip images whose outputs exist")
    add_fault_args(p)
    add_common(p)
    p.set_defaults(func=cmd_segment)

    p = subparsers.add_parser("eval", help="mIoU and mask F1 against ground truth (docs/reference-code.md §7)",
                              description="Evaluate label PNGs (or per-mask JSON predictions + cached masks) of a "
                              "dataset split: mIoU over the split and, with --mask-cache, per-mask macro "
                              "F1.")  # fmt: skip
    p.add_argument("--dataset", required=True, help="voc, voc20, coco_object, coco_stuff, cityscapes")
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--split", default="val")
    p.add_argument("--ids-file", help="only the ids listed in this file")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--pred", required=True, help="output folder of 'tusss segment' (or a folder of {id}.png)")
    p.add_argument("--mask-cache", help="mask cache of the predictions (enables mask F1)")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)
