"""``tusss embed | fit | predict | pseudo-label``: the GLCC commands, thin glue around the store and :class:`GLCC`.

::

    tusss embed --dataset voc --root DIR --split train_aug --mask-cache MASKS --out STORE
                [--clip ViT-B-16 --weights openai --clip-preset reference --dtype float32 --shard-size 65536]
    tusss fit   --store STORE --supervision full|semi|weak --out MODEL
                [--recipe NAME_OR_FILE --set KEY=VALUE]   (GLCC settings of a recipe, see `tusss run`)
                [--labeled-ids FILE]                      (semi: ids of the labelled images)
                [--vocabulary voc --weights openai]       (weak: zero-shot scores with dustbin bg names)
                [--k 50 --alpha 0.9 --rounds R --k-bar K --probe-iters 10000 --knn-backend torch]
    tusss predict      --model MODEL --store VAL_STORE --mask-cache MASKS --out DIR
    tusss pseudo-label --model MODEL --store TRAIN_STORE --mask-cache MASKS --out DIR [--no-restrict]

``predict`` writes ``DIR/labels/{id}.png`` and ``DIR/masks/{id}.json`` (the layout ``tusss eval`` reads);
``pseudo-label`` writes the training-set pseudo-masks ``DIR/SegmentationClassAug/{id}.png`` (VOC layout),
restricted to each image's GT image-level classes when the store has GT (weak/semi training sets).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tusss.cli.common import add_clip_args, add_common, build_clip, progress
from tusss.cli.faults import add_fault_args
from tusss.errors import InputError
from tusss.persist import FailureLog, atomic_write_text, fault_point, remove_stale_temps
from tusss.weights import WEIGHT_SOURCE_HELP

__all__ = ["register"]


def embed_store_meta(args: argparse.Namespace, ds: Any, cache: Any) -> dict[str, Any]:
    """The index meta of an embedding store written by ``tusss embed`` (and ``tusss embed --ray``): where the
    masks and images came from and how they were embedded."""
    return {"dataset": args.dataset, "split": args.split, "root": str(Path(args.root).resolve()),
            "ids_file": str(Path(args.ids_file).resolve()) if args.ids_file else None,
            "clip": args.clip, "weights": args.weights,
            "clip_preset": args.clip_preset, "clip_opt": args.clip_opt or [], "mask_config_hash": cache.config_hash,
            "class_names": list(ds.class_names), "has_background": bool(ds.has_background)}  # fmt: skip


def embed_inputs(args: argparse.Namespace) -> tuple[Any, list[str], Any, bool]:
    """What ``tusss embed`` (and ``tusss embed --ray``) embeds: (dataset, image ids, mask cache, record GT?)."""
    from tusss.data.datasets import get_dataset
    from tusss.masks.cache import open_mask_cache

    ds = get_dataset(args.dataset, args.root, args.split, ids_file=args.ids_file)
    ids = list(ds.ids[: args.limit] if args.limit else ds.ids)
    if not ids:
        raise InputError(f"{args.dataset} split {args.split!r} has no images")
    cache = open_mask_cache(args.mask_cache)
    return ds, ids, cache, not args.no_gt and ds.label(ids[0]) is not None


def cmd_embed(args: argparse.Namespace) -> int:
    from tusss.data.embed import embed_into_store
    from tusss.data.store import StoreWriter

    ds, ids, cache, has_gt = embed_inputs(args)
    clip = build_clip(args.clip, args.weights, args.clip_preset, args.device, args.clip_opt, args.seed)
    meta = {**embed_store_meta(args, ds, cache),
            "embedder": clip.identity()}  # CLIP model / weights sha256 / preset: GLCC provenance (tusss.classify)
    w = StoreWriter(args.out, clip.model.visual.output_dim, dtype=args.dtype,
                    num_classes=ds.num_classes if has_gt else None, shard_size=args.shard_size, meta=meta)
    remove_stale_temps(args.out)  # hidden leftovers of a killed run
    log = FailureLog(args.out, "embed", fail_fast=args.fail_fast)
    done = w.done()
    n_new = embed_into_store(clip, ds, ids, cache, w, log, with_gt=has_gt,
                             iterate=lambda it: progress(it, len(ids), "embed", not args.no_progress),
                             on_failure=lambda i, why: print(f"embed: skipped {i}: {why}", file=sys.stderr),
                             checkpoint=lambda: fault_point("embed"))  # test hook (TUSSS_FAULT_KILL_AFTER)
    w.close()
    log.close()
    print(f"embed: {n_new} image(s) embedded, {len(done)} already stored"
          f"{f', {len(log)} failed' if len(log) else ''} -> {args.out}{log.summary()}")
    return 1 if len(log) else 0


def _load_store(path: str):
    from tusss.data.store import EmbeddingStore
    from tusss.glcc.knn import NpyRows, RowBlocks

    st = EmbeddingStore(path)
    # the memory-mapped shards as one (N, D) row view: never concatenated, never all in float32
    # (NpyRows: each shard mapped only while its rows are copied out -> no file pages left resident)
    return st, RowBlocks([NpyRows(st.shard(i).filename) for i in range(len(st.shards))]), st.metadata()


def _chunked(fn, X, chunk: int = 65536) -> np.ndarray:
    """``fn`` applied to float32 row chunks of the (N, D) row view ``X``, results concatenated."""
    return np.concatenate([fn(X.rows(a, min(len(X), a + chunk))) for a in range(0, len(X), chunk)])


def cmd_fit(args: argparse.Namespace) -> int:
    from tusss.glcc.model import GLCC, GLCCConfig
    from tusss.glcc.probe import ProbeConfig
    from tusss.supervision import group_offsets

    st, X, meta = _load_store(args.store)
    info = st.index.get("meta", {})
    has_bg = bool(info.get("has_background", True))
    if st.num_classes is None:
        raise InputError(f"store {args.store} has no GT fractions: fit needs GT (full/semi) or GT image labels (weak)")
    off = group_offsets(meta.image_id)
    img_ids = [str(meta.image_id[a]) for a in off[:-1]]
    recipe = None
    if args.recipe:  # the GLCC settings (and the supervision kind, vocabulary, scoring) of a recipe
        from tusss.recipes import load_recipe
        from tusss.recipes.runner import bg_method, fg_method, glcc_config

        recipe = load_recipe(args.recipe, args.set)
        if recipe.kind == "ov":
            raise InputError(f"recipe {recipe.name!r} is open-vocabulary: there is no classifier to fit")
        if args.supervision and args.supervision != recipe.kind:
            raise InputError(f"--supervision {args.supervision} contradicts recipe {recipe.name!r} ({recipe.kind})")
        args.supervision = recipe.kind
        cfg = glcc_config(recipe)
        cfg.knn_backend = args.knn_backend
    elif args.set:
        raise InputError("--set needs --recipe")
    else:
        if not args.supervision:
            raise InputError("give --supervision full|semi|weak (or --recipe)")
        cfg = GLCCConfig(k=args.k, alpha=args.alpha, rounds=args.rounds, k_bar=args.k_bar,
                         knn_backend=args.knn_backend, probe=ProbeConfig(iters=args.probe_iters))
    kw: dict = {"has_bg": has_bg}
    if args.supervision in ("full", "semi"):
        kw["gt_fractions"] = meta.gt_frac
    if args.supervision == "semi":
        if not args.labeled_ids and recipe is not None and recipe["dataset"]["labeled_ids"]:
            lab_file = Path(recipe["dataset"]["labeled_ids"])  # the recipe's split file, under the dataset root
            root = args.root or info.get("root")
            if not lab_file.is_absolute() and root:
                lab_file = Path(root) / lab_file
            args.labeled_ids = str(lab_file)
        if not args.labeled_ids:
            raise InputError("--supervision semi needs --labeled-ids FILE")
        from tusss.data.datasets import read_ids_file

        lab = set(read_ids_file(args.labeled_ids))
        kw["labeled_images"] = np.array([i in lab for i in img_ids])
    if args.supervision == "weak":
        from tusss.pipeline import resolve_class_set

        vocabulary = recipe["text"]["vocabulary"] if recipe is not None else args.vocabulary
        cs = resolve_class_set(vocabulary=vocabulary, templates=(recipe["text"]["templates"] or None)
                               if recipe is not None else None)
        if cs.bg_mode != "dustbin":
            raise InputError(f"weak supervision needs a vocabulary with background dustbin names (e.g. voc, "
                             f"coco-object), {vocabulary!r} has bg_mode {cs.bg_mode!r}")
        clip = build_clip(info.get("clip", "ViT-B-16"), args.weights, info.get("clip_preset", "reference"),
                          args.device, info.get("clip_opt"), args.seed)
        text = clip.encode_text(list(cs.names), cs.templates)
        kw["zero_shot_logits"] = _chunked(lambda x: clip.logits(x, text), X)
        kw["image_labels"] = _gt_image_labels(args, info, img_ids)
        kw["num_classes"] = st.num_classes
        if recipe is not None:
            kw["fg_method"], kw["bg_method"] = fg_method(recipe["text"]["fg"]), bg_method(recipe["text"]["bg"])
    m = GLCC(cfg, class_names=info.get("class_names"))
    m.fit(X, meta.area, meta.image_id, args.supervision, progress=not args.no_progress, **kw)
    if isinstance(info.get("embedder"), dict):  # provenance checked by tusss.Predictor (tusss.classify)
        m.provenance = {**info["embedder"], "mask_config_hash": info.get("mask_config_hash")}
    m.save(args.out)
    print(f"fit: GLCC ({args.supervision}) on {len(X)} masks of {len(img_ids)} images -> {args.out}")
    for h in m.history_:
        print("  " + json.dumps(h))
    return 0


def _gt_image_labels(args: argparse.Namespace, info: dict, img_ids: list[str]) -> list[np.ndarray]:
    """Weak supervision's image-level labels: the classes of each image's ground truth (not the classes that
    some mask covers), read from the dataset the store was embedded from (``--root`` or the store's root)."""
    from tusss.data.datasets import get_dataset
    from tusss.recipes.runner import weak_image_labels

    root = args.root or info.get("root")
    if not root or not info.get("dataset"):
        raise InputError("weak supervision reads the image labels from the dataset's ground truth: give --root "
                         "(the store records no dataset root)")
    ds = get_dataset(info["dataset"], root, info.get("split", "train"), ids_file=info.get("ids_file"))
    return weak_image_labels(ds, img_ids)


def _scores_per_image(args: argparse.Namespace):
    from tusss.glcc.model import GLCC
    from tusss.supervision import group_offsets

    m = GLCC.load(args.model)
    st, X, meta = _load_store(args.store)
    scores = _chunked(m.predict, X) if len(X) else np.zeros((0, m.num_classes), np.float32)
    return m, st, meta, scores, group_offsets(meta.image_id)


def _paint(cache, img_id: str, mask_index: np.ndarray, labels: np.ndarray, conf: np.ndarray):
    from tusss.labels import paint_labels

    ms = _stored_masks(cache, img_id, mask_index)
    return paint_labels(ms.masks, labels, ms.level, conf, fill=0)


def _stored_masks(cache, img_id: str, mask_index: np.ndarray):
    """The cached masks of ``img_id`` that the store holds embeddings of (``mask_index``), in store order."""
    ms = cache.get(img_id)
    if ms is None:
        raise InputError(f"mask cache has no masks for {img_id!r}")
    if len(mask_index) and (mask_index.min() < 0 or mask_index.max() >= len(ms)):
        raise InputError(f"the store's mask indices of {img_id!r} do not fit the {len(ms)} cached masks (other "
                         "mask cache?)")
    return ms.subset(mask_index)


def _per_image(args: argparse.Namespace, command: str, out: Path, one) -> int:
    """Run ``one(j, a, b, image_id)`` for every image of the store: bad items recorded in ``out``, kill hook."""
    m, st, meta, scores, off = _scores_per_image(args)
    from tusss.masks.cache import open_mask_cache

    cache = open_mask_cache(args.mask_cache)
    remove_stale_temps(out)
    log = FailureLog(out, command, fail_fast=args.fail_fast)
    n = len(off) - 1
    fault_point(command)
    n_ok = 0
    for j in progress(range(n), n, command, not args.no_progress):
        a, b = int(off[j]), int(off[j + 1])
        i = str(meta.image_id[a])
        ok, _ = log.attempt(i, one, m, meta, scores, cache, a, b, i)
        if not ok:
            print(f"{command}: skipped {i}: {log.failures[i]}", file=sys.stderr)
            continue
        n_ok += 1
        fault_point(command)
    log.close()
    tail = f", {len(log)} failed" if len(log) else ""
    print(f"{command}: {n_ok} image(s){tail} -> {out}{log.summary()}")
    return 1 if len(log) else 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tusss.io import write_label_png

    out = Path(args.out)

    def one(m, meta, scores, cache, a: int, b: int, i: str) -> None:
        from tusss.labels import masks_json, paint_labels

        s = scores[a:b]
        labels, conf = s.argmax(1), s.max(1)
        ms = _stored_masks(cache, i, meta.mask_index[a:b])
        write_label_png(out / "labels" / f"{i}.png", paint_labels(ms.masks, labels, ms.level, conf, fill=0))
        js = masks_json(labels, conf, ms, m.class_names, id=i, fill=0)  # the schema of `tusss segment`
        atomic_write_text(out / "masks" / f"{i}.json", json.dumps(js))

    return _per_image(args, "predict", out, one)


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    from tusss.io import write_label_png

    out = Path(args.out) / "SegmentationClassAug"

    def one(m, meta, scores, cache, a: int, b: int, i: str) -> None:
        s = scores[a:b].copy()
        if not args.no_restrict and meta.gt_frac is not None:  # image-level labels of the image (bg allowed)
            allowed = (meta.gt_frac[a:b] > 0).any(0)
            if m.has_bg_:
                allowed[0] = True
            s[:, ~allowed] = -np.inf
        write_label_png(out / f"{i}.png", _paint(cache, i, meta.mask_index[a:b], s.argmax(1), s.max(1)))

    return _per_image(args, "pseudo-label", Path(args.out), one)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``embed``, ``fit``, ``predict`` and ``pseudo-label`` to the ``tusss`` command."""
    p = subparsers.add_parser("embed", help="DBA-CLIP embeddings of every cached mask of a split -> store")
    p.add_argument("--dataset", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--ids-file")
    p.add_argument("--limit", type=int)
    p.add_argument("--mask-cache", required=True, help="mask cache written by `tusss masks`")
    p.add_argument("--out", required=True, help="embedding store folder (resumed when it exists)")
    add_clip_args(p, title=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                   help="embedding dtype on disk (default float32, as the authors store them)")
    p.add_argument("--shard-size", type=int, default=65536)
    p.add_argument("--no-gt", action="store_true", help="do not record GT class fractions")
    add_fault_args(p)
    add_common(p)
    p.set_defaults(func=cmd_embed)

    p = subparsers.add_parser("fit", help="build a GLCC classifier from an embedding store")
    p.add_argument("--store", required=True)
    p.add_argument("--supervision", choices=["full", "semi", "weak"], help="(default: the recipe's)")
    p.add_argument("--recipe", help="take the GLCC settings from a recipe (name or .toml file, see `tusss run`)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field (repeatable)")
    p.add_argument("--root", help="weak: dataset root for the GT image labels (default: the store's)")
    p.add_argument("--out", required=True, help="model folder")
    p.add_argument("--labeled-ids", help="semi: file listing the labelled image ids")
    p.add_argument("--vocabulary", default="voc", help="weak: dustbin vocabulary for zero-shot scores")
    p.add_argument("--weights", default="openai", help=f"weak: CLIP weights of the text encoder: {WEIGHT_SOURCE_HELP}")
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--rounds", type=int)
    p.add_argument("--k-bar", type=int)
    p.add_argument("--probe-iters", type=int, default=10_000)
    p.add_argument("--knn-backend", default="torch",
                   choices=["torch", "torch-tiled", "faiss", "faiss-ivf", "faiss-hnsw"],
                   help="kNN graph search; torch-tiled: exact tiles with a running top-k (float16 products on CUDA)")
    add_common(p)
    p.set_defaults(func=cmd_fit)

    for name, fn, hlp in (("predict", cmd_predict, "classify the masks of a (val) store with a GLCC"),
                          ("pseudo-label", cmd_pseudo_label, "training-set pseudo-masks (VOC layout PNGs)")):
        p = subparsers.add_parser(name, help=hlp)
        p.add_argument("--model", required=True)
        p.add_argument("--store", required=True)
        p.add_argument("--mask-cache", required=True)
        p.add_argument("--out", required=True)
        if name == "pseudo-label":
            p.add_argument("--no-restrict", action="store_true", help="do not restrict to GT image classes")
        add_fault_args(p)
        add_common(p)
        p.set_defaults(func=fn)
