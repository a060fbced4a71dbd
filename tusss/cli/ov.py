"""The ``tusss`` console command.

Subcommands::

    tusss masks   IMAGE_OR_DIR... | --dataset NAME --root DIR [--split S]  --cache-dir DIR
                  [--sam vit_h] [--checkpoint official|PATH|random] [--preset tuss] [--sam-opt KEY=VALUE]
    tusss segment IMAGE_OR_DIR... | --dataset NAME --root DIR [--split S]
                  (--vocabulary voc21 | --classes "cat,dog" | --classes-file F) --out DIR
                  [--weights openai|PATH|random] [--clip ViT-B-16] [--mask-cache DIR] ...
    tusss eval    --dataset NAME --root DIR [--split S] --pred DIR [--mask-cache DIR] [--out metrics.json]

``tusss segment`` writes per image ``OUT/labels/{id}.png`` (palette label PNG), ``OUT/overlays/{id}.png``
(colour overlay) and ``OUT/masks/{id}.json`` (per-mask labels, confidences and scores).
``tusss eval`` computes the mIoU of the label PNGs (or of labels re-painted from the JSONs and the cached
masks) and, when the mask cache is given, the mask F1 of reference §7.
``--checkpoint random`` / ``--weights random`` build the networks with random weights (seeded by ``--seed``),
for tests and dry runs. GLCC subcommands are added by :mod:`tusss.glcc.commands` when that module exists.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tusss.errors import CorruptFileError, InputError, TusssError

MANIFEST = "tusss-masks.json"


# ---------------------------------------------------------------------------------------------- helpers
def _parse_opts(pairs: Sequence[str] | None, what: str) -> dict[str, Any]:
    """``["points_per_side=16", "score_nms_offset=[0,0,1]"]`` -> dict; values parsed as JSON when possible."""
    out: dict[str, Any] = {}
    for p in pairs or ():
        if "=" not in p:
            raise InputError(f"{what} option {p!r} must look like KEY=VALUE")
        k, v = p.split("=", 1)
        k = k.strip().replace("-", "_")
        try:
            val = json.loads(v)
        except json.JSONDecodeError:
            val = v
        if isinstance(val, list):
            val = tuple(val)
        out[k] = val
    return out


def _weights_arg(v: str | None) -> str | None:
    return None if v is None or v.lower() in ("random", "none") else v


def _image_items(inputs: Sequence[str]) -> list[tuple[str, Path]]:
    """(id, path) for image files and every image directly inside folders; id = file stem (unique)."""
    from tusss.io import MissingFileError, list_images

    items: list[tuple[str, Path]] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            items += [(q.stem, q) for q in list_images(p)]
        elif p.is_file():
            items.append((p.stem, p))
        else:
            raise MissingFileError(f"input {s!r} does not exist")
    seen: dict[str, Path] = {}
    for i, p in items:
        if i in seen and seen[i] != p:
            raise InputError(f"two inputs share the id {i!r}: {str(seen[i])!r} and {str(p)!r}")
        seen[i] = p
    if not seen:
        raise InputError(f"no images found in {list(inputs)}")
    return list(seen.items())


class _Source:
    """Uniform access to the images of a command: files/folders or a dataset split."""

    def __init__(self, args: argparse.Namespace, need_inputs: bool = True) -> None:
        from tusss.data.datasets import get_dataset

        self.dataset = None
        if getattr(args, "dataset", None):
            if getattr(args, "inputs", None):
                raise InputError("give either image paths or --dataset, not both")
            if not args.root:
                raise InputError("--dataset needs --root")
            self.dataset = get_dataset(args.dataset, args.root, args.split, ids_file=args.ids_file)
            self.ids = list(self.dataset.ids)
            self._paths: dict[str, Path] = {}
        else:
            if need_inputs and not getattr(args, "inputs", None):
                raise InputError("give image files/folders, or --dataset NAME --root DIR")
            items = _image_items(args.inputs)
            self.ids = [i for i, _ in items]
            self._paths = dict(items)
        if getattr(args, "limit", None):
            self.ids = self.ids[: args.limit]

    def path(self, img_id: str) -> Path:
        return self.dataset.image_path(img_id) if self.dataset is not None else self._paths[img_id]

    def image(self, img_id: str) -> np.ndarray:
        from tusss.io import read_image

        return self.dataset.image(img_id) if self.dataset is not None else read_image(self._paths[img_id])


def _build_generator(args: argparse.Namespace):
    import torch

    from tusss.masks.generator import MaskGenerator

    torch.manual_seed(args.seed)
    return MaskGenerator.from_pretrained(args.sam, checkpoint=_weights_arg(args.checkpoint), preset=args.preset,
                                         device=args.device, **_parse_opts(args.sam_opt, "--sam-opt"))  # fmt: skip


def _check_manifest(root: Path, gen: Any, overwrite: bool = False) -> None:
    """Refuse a mask cache whose manifest names another mask configuration (unless ``overwrite``)."""
    p = root / MANIFEST
    if overwrite or not p.is_file():
        return
    try:
        old = json.loads(p.read_text()).get("config_hash")
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"mask cache manifest {str(p)!r} is unreadable: {e}") from e
    if old != gen.config_hash:
        raise InputError(f"mask cache {str(root)!r} holds masks of another configuration (hash {str(old)[:12]}..., "
                         f"this run {gen.config_hash[:12]}...); use another --cache-dir or --overwrite")  # fmt: skip


def _write_manifest(root: Path, gen: Any) -> None:
    """Record the mask configuration of a cache (``tusss eval`` opens the cache with it, without SAM)."""
    root.mkdir(parents=True, exist_ok=True)
    man = {"config_hash": gen.config_hash, "model_type": gen.model_type, "weights_id": gen.weights_id,
           "config": gen.config.to_dict()}  # fmt: skip
    p = root / MANIFEST
    if p.is_file():
        old = json.loads(p.read_text())
        if old.get("config_hash") == man["config_hash"]:
            return
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(man, indent=1))
    os.replace(tmp, p)


def open_mask_cache(root: str | os.PathLike) -> Any:
    """Open an existing mask cache without building SAM: the config hash comes from the manifest written by
    ``tusss masks`` / ``tusss segment``, else from the cached files themselves (all must agree)."""
    from tusss.masks.cache import MaskCache

    r = Path(root)
    if not r.is_dir():
        from tusss.io import MissingFileError

        raise MissingFileError(f"mask cache {str(r)!r} does not exist")
    man = r / MANIFEST
    if man.is_file():
        try:
            h = json.loads(man.read_text())["config_hash"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CorruptFileError(f"mask cache manifest {str(man)!r} is unreadable: {e}") from e
        return MaskCache(r, h)
    probe = MaskCache(r, "probe")
    hashes = set()
    for i in probe.ids():
        with np.load(probe.path(i), allow_pickle=False) as z:
            hashes.add(str(z["__config_hash__"]))
    if not hashes:
        raise InputError(f"mask cache {str(r)!r} holds no masks")
    if len(hashes) > 1:
        raise InputError(f"mask cache {str(r)!r} mixes {len(hashes)} mask configurations")
    return MaskCache(r, hashes.pop())


def _progress(it, total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, unit="img", disable=not enabled)


# ---------------------------------------------------------------------------------------------- masks
def cmd_masks(args: argparse.Namespace) -> int:
    from tusss.masks.cache import MaskCache, cache_masks

    src = _Source(args)
    gen = _build_generator(args)
    cache = MaskCache.for_generator(args.cache_dir, gen, overwrite=args.overwrite)
    _check_manifest(Path(args.cache_dir), gen, args.overwrite)

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
                          on_error="collect" if args.keep_going else "raise")  # fmt: skip
    _write_manifest(Path(args.cache_dir), gen)
    print(f"masks: {len(res['generated'])} generated, {len(res['skipped'])} already cached, "
          f"{len(res['failed'])} failed -> {args.cache_dir}")  # fmt: skip
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
    import torch

    from tusss.clip.model import DBAClip
    from tusss.io import overlay, write_image, write_label_png
    from tusss.masks.cache import MaskCache
    from tusss.pipeline import OVSegmenter, resolve_class_set

    cls_kw = _classes_from_args(args)
    templates = args.templates
    resolve_class_set(templates=templates, background=not args.no_background, **cls_kw)  # fail before loading
    src = _Source(args)
    out = Path(args.out)
    gen = _build_generator(args)
    torch.manual_seed(args.seed)
    clip = DBAClip.from_pretrained(args.clip, weights=_weights_arg(args.weights), preset=args.clip_preset,
                                   device=args.device, **_parse_opts(args.clip_opt, "--clip-opt"))  # fmt: skip
    seg = OVSegmenter(gen, clip, templates=templates, background=not args.no_background, bg_alpha=args.bg_alpha,
                      bg_pow=args.bg_pow, fill=args.fill, **cls_kw)  # fmt: skip
    cache = None
    if args.mask_cache:
        cache = MaskCache.for_generator(args.mask_cache, gen)
        _check_manifest(Path(args.mask_cache), gen)
    n_done = n_skip = 0
    for i in _progress(src.ids, len(src.ids), "segment", not args.no_progress):
        lab_p, ov_p, js_p = out / "labels" / f"{i}.png", out / "overlays" / f"{i}.png", out / "masks" / f"{i}.json"
        if args.skip_existing and lab_p.is_file() and js_p.is_file():
            n_skip += 1
            continue
        image = src.image(i)
        masks = cache.get(i) if cache is not None else None
        if masks is None:
            masks = gen.generate(image)
            if cache is not None:
                cache.put(i, masks)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = seg.segment(image, masks)
        for w in caught:
            print(f"warning: {i}: {w.message}", file=sys.stderr)
        write_label_png(lab_p, res.label_map)
        write_image(ov_p, overlay(image, res.label_map, alpha=args.overlay_alpha))
        js = res.to_json(include_scores=not args.no_scores)
        js = {"id": i, "image": str(src.path(i)), "source": seg.class_set.source,
              "templates": seg.class_set.templates if isinstance(seg.class_set.templates, str)
              else list(seg.class_set.templates), "bg_mode": seg.class_set.bg_mode, "fill": seg.fill,
              "mask_config_hash": gen.config_hash, **js}  # fmt: skip
        js_p.parent.mkdir(parents=True, exist_ok=True)
        js_p.write_text(json.dumps(js))
        n_done += 1
    if cache is not None:
        _write_manifest(Path(args.mask_cache), gen)
    print(f"segment: {n_done} image(s) written, {n_skip} skipped -> {out}")
    return 0


# ---------------------------------------------------------------------------------------------- eval
def _drop_empty(ms: Any) -> Any:
    if len(ms) == 0:
        return ms
    nz = ms.masks.reshape(len(ms), -1).any(1)
    return ms if nz.all() else ms.subset(np.flatnonzero(nz))


def evaluate(
    dataset: Any,
    pred_dir: str | os.PathLike,
    mask_cache: Any = None,
    ids: Sequence[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """mIoU (and, with ``mask_cache``, mask F1) of the predictions in ``pred_dir`` on ``dataset`` (§7).

    Prediction of image ``id``: ``pred_dir/labels/{id}.png`` (or ``pred_dir/{id}.png``); without a PNG the
    map is re-painted from ``pred_dir/masks/{id}.json`` and the cached masks (reference §5 priority rule).
    Mask F1 needs the JSON (per-mask labels) and the mask cache (per-mask GT votes).
    """
    from tusss.io import MissingFileError, read_label
    from tusss.labels import paint_labels, vote_fractions, vote_labels
    from tusss.metrics import ConfusionMatrix

    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise MissingFileError(f"prediction folder {str(pred_dir)!r} does not exist")
    K = dataset.num_classes
    pix = ConfusionMatrix(K)
    msk = ConfusionMatrix(K)
    n_masks = 0
    ids = list(dataset.ids if ids is None else ids)
    for i in _progress(ids, len(ids), "eval", progress):
        gt = dataset.label(i)
        if gt is None:
            raise InputError(f"{dataset.name} split {dataset.split!r} has no ground truth (id {i!r})")
        js_p = pred_dir / "masks" / f"{i}.json"
        js = None
        if js_p.is_file():
            try:
                js = json.loads(js_p.read_text())
            except json.JSONDecodeError as e:
                raise CorruptFileError(f"prediction file {str(js_p)!r} is not valid JSON: {e}") from e
        ms = None
        if mask_cache is not None and js is None:
            raise MissingFileError(f"mask F1 needs the per-mask predictions {str(js_p)!r} (written by "
                                   "`tusss segment` / `tusss predict`); leave out --mask-cache to evaluate label "
                                   "PNGs only")  # fmt: skip
        if mask_cache is not None and js is not None:
            ms = mask_cache.get(i)
            if ms is None:
                raise MissingFileError(f"mask cache {str(mask_cache.root)!r} has no masks for id {i!r}")
            ms = _drop_empty(ms)
            if len(ms) != js["num_masks"]:
                raise InputError(f"{str(js_p)!r} lists {js['num_masks']} masks but the cache holds {len(ms)} "
                                 f"non-empty masks for id {i!r} (other mask configuration?)")  # fmt: skip
            if ms.image_hw != gt.shape:
                raise InputError(f"cached masks of {i!r} are {ms.image_hw} but the GT is {gt.shape}")
        lab_p = next((p for p in (pred_dir / "labels" / f"{i}.png", pred_dir / f"{i}.png") if p.is_file()), None)
        if lab_p is not None:
            pred = read_label(lab_p)
        elif js is not None and ms is not None:
            labels = np.array([m["label"] for m in js["masks"]], np.int64)
            conf = np.array([m["conf"] for m in js["masks"]], np.float64)
            pred = paint_labels(ms.masks, labels, ms.level, conf, fill=int(js.get("fill", 0)))
        else:
            raise MissingFileError(f"no prediction for id {i!r}: neither {str(pred_dir / 'labels' / (i + '.png'))!r}"
                                   f" nor {str(js_p)!r} with --mask-cache")  # fmt: skip
        if pred.shape != gt.shape:
            raise InputError(f"prediction for {i!r} has size {pred.shape} but the GT is {gt.shape}")
        pix.update(pred, gt)
        if ms is not None and len(ms):
            vote = vote_labels(vote_fractions(ms.masks, gt, K))
            labels = np.array([m["label"] for m in js["masks"]], np.int64)
            msk.update(labels, vote)
            n_masks += len(ms)
    s = pix.scores()
    out: dict[str, Any] = {"dataset": dataset.name, "split": dataset.split, "num_images": len(ids),
                           "mIoU": s.miou, "pixel": s.to_dict(dataset.class_names)}  # fmt: skip
    if mask_cache is not None:
        f = msk.scores()
        out["mask"] = {"num_masks": n_masks, "F1": f.f1, "accuracy": f.accuracy, "precision": f.precision,
                       "recall": f.recall, "F1_zero": f.f1_zero, "confusion": msk.matrix.tolist()}  # fmt: skip
    return out


def _json_clean(x: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(x, dict):
        return {k: _json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def cmd_eval(args: argparse.Namespace) -> int:
    from tusss.data.datasets import get_dataset

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
        Path(args.out).write_text(json.dumps(_json_clean(res), indent=1, allow_nan=False))
    return 0


# ---------------------------------------------------------------------------------------------- parser
def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    p.add_argument("--dataset", help="dataset name (voc, voc20, coco_object, coco_stuff, cityscapes, folder)")
    p.add_argument("--root", help="dataset root folder")
    p.add_argument("--split", default="val", help="dataset split (default: val)")
    p.add_argument("--ids-file", help="only the ids listed in this file")
    p.add_argument("--limit", type=int, help="only the first N images")


def _add_sam_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SAM masks")
    g.add_argument("--sam", default="vit_h", help="SAM model type: vit_h (reference), vit_l, vit_b, vit_tiny")
    g.add_argument("--checkpoint", default="official", help="'official', a checkpoint path, or 'random'")
    g.add_argument("--preset", default="tuss", help="mask preset: tuss (reference §1) or sam")
    g.add_argument("--sam-opt", action="append", metavar="KEY=VALUE",
                   help="override a MaskGenConfig field, e.g. points_per_side=16 (repeatable)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="torch seed for random weights (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The ``tusss`` argument parser (GLCC subcommands included when available)."""
    from tusss import __version__

    parser = argparse.ArgumentParser(prog="tusss", description="Tuning-free universally-supervised semantic "
                                     "segmentation: SAM masks + DBA-CLIP + GLCC.")  # fmt: skip
    parser.add_argument("--version", action="version", version=f"tusss {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("masks", help="generate and cache SAM masks (resumable)",
                       description="Generate SAM masks for images or a dataset split and store them in a "
                       "mask cache; images already cached are skipped.")  # fmt: skip
    _add_source_args(p)
    _add_sam_args(p)
    p.add_argument("--cache-dir", required=True, help="mask cache folder")
    p.add_argument("--overwrite", action="store_true", help="replace masks cached with another configuration")
    p.add_argument("--keep-going", action="store_true", help="skip unreadable images instead of stopping")
    _add_common(p)
    p.set_defaults(func=cmd_masks)

    p = sub.add_parser("segment", help="open-vocabulary segmentation of images",
                       description="Segment images with SAM masks and DBA-CLIP text scores; writes "
                       "OUT/labels/{id}.png, OUT/overlays/{id}.png and OUT/masks/{id}.json.")  # fmt: skip
    _add_source_args(p)
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
    _add_sam_args(p)
    g = p.add_argument_group("DBA-CLIP")
    g.add_argument("--clip", default="ViT-B-16", help="open_clip model (ViT-B-16; tusss-tiny for tests)")
    g.add_argument("--weights", default="openai", help="'openai', a checkpoint path, or 'random'")
    g.add_argument("--clip-preset", default="reference", help="DBA-CLIP preset (reference, paper, maskclip, ...)")
    g.add_argument("--clip-opt", action="append", metavar="KEY=VALUE", help="override a DBAClipConfig field")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mask-cache", help="read/write SAM masks in this mask cache")
    p.add_argument("--overlay-alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    p.add_argument("--no-scores", action="store_true", help="leave per-class scores out of the JSON")
    p.add_argument("--skip-existing", action="store_true", help="skip images whose outputs exist")
    _add_common(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("eval", help="mIoU and mask F1 against ground truth (reference §7)",
                       description="Evaluate label PNGs (or per-mask JSON predictions + cached masks) of a "
                       "dataset split: mIoU over the split and, with --mask-cache, per-mask macro F1.")  # fmt: skip
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

    try:
        glcc_commands = importlib.import_module("tusss.glcc.commands")
    except ModuleNotFoundError as e:  # only the module's absence is tolerated
        if e.name not in ("tusss.glcc.commands", "tusss.glcc"):
            raise
        glcc_commands = None
    if glcc_commands is not None:
        glcc_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tusss`` command; returns the exit status (1 on a tusss error, 2 on bad usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TusssError as e:
        print(f"tusss {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
