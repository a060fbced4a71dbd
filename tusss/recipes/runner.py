"""Run a recipe: masks -> embed -> fit -> predict -> eval, each stage resumable and skipped when complete.

Work directory layout (``key`` = a short hash of exactly the recipe fields the stage's output depends on, so
changing a field recomputes only the stages downstream of it; ``source`` / ``note`` / ``layout`` texts do not
count)::

    WORK/masks/<key>/                 SAM mask cache (tusss.masks.cache; resumable image by image)
    WORK/embed/<split>-<key>/         embedding store (tusss.data.store; resumable shard by shard)
    WORK/fit/<key>/                   GLCC directory (GLCC.save; written atomically)
    WORK/predict/<key>/               labels/{id}.png, masks/{id}.json, done.json (written last)
    WORK/eval/<key>.json              mIoU and mask F1 (tusss.evaluation.evaluate)

Open-vocabulary recipes (``supervision = "ov"``) have no fit stage: the text classifier scores the masks.

The stage functions call the library (:class:`tusss.masks.MaskGenerator`, :func:`tusss.masks.cache.cache_masks`,
:class:`tusss.clip.model.DBAClip`, :class:`tusss.data.store.StoreWriter`, :class:`tusss.glcc.model.GLCC`,
:class:`tusss.pipeline.OVSegmenter`, :func:`tusss.evaluation.evaluate`); nothing here re-implements them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tusss.errors import InputError
from tusss.recipes.schema import Recipe

__all__ = ["RecipeRunner", "RayOptions", "RunResult", "glcc_config", "probe_schedule", "fg_method", "bg_method",
           "weak_image_labels", "format_table", "tune", "TuneResult", "grid_size"]

_TEXT_KEYS = ("source", "note", "layout", "title")


@dataclass(frozen=True)
class RayOptions:
    """Run the masks and embed stages on a Ray cluster (``tusss run --ray``): SAM and DBA-CLIP actors built from
    the recipe (:func:`tusss.distributed.ray_cache_masks`, :func:`tusss.distributed.ray_embed`), the same cache
    files and store as the single-process stages; fit, predict and eval stay in the driver.

    Attributes:
        address: cluster address, or None for a local cluster on 127.0.0.1 (started on first use, stopped at
            the end of the run).
        pool: :class:`tusss.distributed.PoolConfig` (actors, CPUs / GPUs per actor); None: its defaults.
        num_cpus: CPUs of a local cluster (None: all).
    """

    address: str | None = None
    pool: Any = None
    num_cpus: int | None = None


# ---------------------------------------------------------------------------------------------- recipe -> config
def fg_method(d: dict[str, Any]):
    """Recipe fg table -> :class:`tusss.scoring.FgMethod` (``softmax = false`` -> no softmax)."""
    from tusss.scoring import FgMethod

    return FgMethod(softmax=None if d["softmax"] is False else float(d["softmax"]), norm=d["norm"], L1=d["L1"],
                    bypath_suppress=d["bypath_suppress"], is_score=d.get("is_score", False))


def bg_method(d: dict[str, Any]):
    """Recipe bg table -> :class:`tusss.scoring.BgMethod`."""
    from tusss.scoring import BgMethod

    return BgMethod(method=d["method"], pow=d["pow"], alpha=d["alpha"], thresh=d["thresh"])


def probe_schedule(recipe: Recipe) -> tuple:
    """Per-round :class:`tusss.glcc.probe.ProbeConfig`: iterations = base_iters / iter_factor; warm-up =
    base_warmup / iter_factor when ``warmup_scales`` (VOC) else base_warmup (COCO: fixed 18 000 / 12 000)."""
    from tusss.glcc.probe import ProbeConfig

    p = recipe["probe"]
    out = []
    for f in p["iter_factor"]:
        iters = int(round(p["base_iters"] / f))
        warm = int(round(p["base_warmup"] / f)) if p["warmup_scales"] else int(p["base_warmup"])
        out.append(ProbeConfig(iters=iters, warmup_iters=min(warm, iters), lr=p["lr"],
                               warmup_start_lr=p["warmup_start_lr"], momentum=p["momentum"],
                               weight_decay=p["weight_decay"], batch_size=p["batch_size"], seed=p["seed"],
                               sampler=p["sampler"]))
    return tuple(out)


def glcc_config(recipe: Recipe):
    """The :class:`tusss.glcc.model.GLCCConfig` of a (full / semi / weak) recipe."""
    from tusss.glcc.inductive import CombineConfig
    from tusss.glcc.model import GLCCConfig

    if recipe.kind == "ov":
        raise InputError(f"recipe {recipe.name!r} is open-vocabulary: it has no GLCC")
    g, c = recipe["glcc"], recipe["combine"]
    probes = probe_schedule(recipe)
    return GLCCConfig(
        k=g["k"][0], alpha=g["alpha"], gamma=g["gamma"],
        rounds=None if recipe.kind == "full" else g["rounds"], k_rounds=tuple(g["k"]),
        k_bar=g["k_bar"] or None, a_norm=g["a_norm"], order=g["order"], knn_backend=g["knn_backend"],
        cg_tol=g["cg_tol"], cg_maxiter=g["cg_maxiter"], lp_alpha_bg=g["lp_alpha_bg"][0],
        probe_alpha_bg=g["probe_alpha_bg"], soft_gamma=g["soft_gamma"], probe=probes[0],
        combine=CombineConfig(w=c["w"], lp_l1=c["lp_l1"], alpha_probe=c["alpha_probe"], alpha_lp=c["alpha_lp"],
                              alpha_final=c["alpha_final"]),
        lp_alpha_bg_rounds=tuple(g["lp_alpha_bg"]),
        lp_fg_rounds=tuple(fg_method(f) for f in g["lp_fg"]) if g["lp_fg"] else None,
        probe_rounds=probes,
    )


def weak_image_labels(dataset: Any, image_ids: list[str]) -> list[np.ndarray]:
    """Image-level labels of weak supervision: the fg indices of the classes present in each image's
    **ground truth** (a class that no SAM mask covers is kept), via ``dataset.image_classes(id, fg_index=True)``."""
    out = []
    for i in image_ids:
        c = dataset.image_classes(i, fg_index=True)
        if c is None:
            raise InputError(f"{dataset.name} split {dataset.split!r} has no ground truth for {i!r}: weak "
                             "supervision needs the image-level labels")
        out.append(np.asarray(c, np.int64))
    return out


def _strip(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in sorted(x.items()) if k not in _TEXT_KEYS}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return x


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(_strip(list(parts)), sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------- runner
@dataclass
class RunResult:
    """What :meth:`RecipeRunner.run` did and measured.

    Attributes:
        recipe: the recipe name. stages: ``{stage: "done" | "skipped"}`` in order.
        metrics: the evaluation dict (``mIoU``, ``mask`` ...). table: the printable result table.
        paths: the stage output paths. failures: items (images) this run could not process, with why.
    """

    recipe: str
    stages: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    table: str = ""
    paths: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def miou(self) -> float:
        return float(self.metrics.get("mIoU", math.nan))

    @property
    def mask_f1(self) -> float:
        v = self.metrics.get("mask", {}).get("F1")
        return math.nan if v is None else float(v)


class RecipeRunner:
    """Run one recipe on a dataset root, keeping every stage's output under ``work``.

    Args:
        recipe: a validated :class:`Recipe`.
        root: the dataset root (layout of ``recipe["dataset"]["name"]``, see docs/recipes.md).
        work: work directory (created).
        device: torch device for SAM and CLIP.
        progress: show progress bars.
        mask_generator: testing / advanced hook: a generator (``generate(image) -> MaskSet``, ``config_hash``,
            ``model_type``, ``weights_id``, ``config``) used instead of building SAM from ``recipe["masks"]``;
            its masks are stored under the recipe's mask key (the cache manifest records its config hash).
        shard_size: rows per embedding-store shard (resume granularity of the embed stage).
        seed: torch seed set before building SAM and before building CLIP (random weights are then reproducible
            across resumes and equal to those of the Ray actors).
        limit: use only the first ``limit`` images of each split (quick looks).
        log: where stage messages go (default print).
        ray: run the masks and embed stages on Ray (:class:`RayOptions`); None: in this process.
    """

    def __init__(self, recipe: Recipe, root: str | os.PathLike, work: str | os.PathLike, *, device: str = "cpu",
                 progress: bool = False, mask_generator: Any = None, shard_size: int = 65536, seed: int = 0,
                 limit: int | None = None, log: Callable[[str], None] | None = print,
                 ray: RayOptions | None = None) -> None:
        self.recipe = recipe
        self.root = Path(root)
        self.work = Path(work)
        self.device = device
        self.progress = progress
        self._gen = mask_generator
        self.shard_size = int(shard_size)
        self.seed = int(seed)
        self.limit = limit
        self._log = log or (lambda s: None)
        self._clip = None
        self._datasets: dict[str, Any] = {}
        self.failures: dict[str, str] = {}  # "stage split id" -> reason, for items skipped by this run
        self.ray = ray
        if ray is not None and mask_generator is not None:
            raise InputError("a Ray run builds SAM from the recipe in each actor: the mask_generator hook cannot be "
                             "used with ray=")
        self._ray_ready = False  # connected / started for this run
        self._ray_owned = False  # this run started a local cluster (and stops it at the end)

    # ------------------------------------------------------------------ helpers
    def log(self, msg: str) -> None:
        self._log(f"[{self.recipe.name}] {msg}")

    def dataset(self, which: str):
        """The dataset of ``which`` = "train" | "eval"."""
        if which not in self._datasets:
            from tusss.data.datasets import get_dataset

            d = self.recipe["dataset"]
            ids_file = d["train_ids" if which == "train" else "eval_ids"] or None
            if ids_file and not os.path.isabs(ids_file):
                ids_file = str(self.root / ids_file)
            self._datasets[which] = get_dataset(d["name"], self.root, d["train_split" if which == "train"
                                                                        else "eval_split"], ids_file=ids_file)
        return self._datasets[which]

    def ids(self, which: str) -> list[str]:
        ds = self.dataset(which)
        ids = list(ds.ids)
        return ids[: self.limit] if self.limit else ids

    def splits(self) -> list[str]:
        return ["eval"] if self.recipe.kind == "ov" else ["train", "eval"]

    def mask_key(self) -> str:
        return _key("masks", self.recipe["masks"])

    def embed_key(self, which: str) -> str:
        r = self.recipe
        d = r["dataset"]
        split = d["train_split" if which == "train" else "eval_split"]
        return f"{split}-" + _key("embed", self.mask_key(), r["clip"], d["name"], split,
                                  d["train_ids" if which == "train" else "eval_ids"], self.limit)

    def fit_key(self) -> str:
        r = self.recipe
        g = {k: v for k, v in r["glcc"].items() if k not in ("k_bar", "a_norm")}  # used at predict time
        text = r["text"] if (r.kind == "weak" or r["semi"]["start"] == "ov" and r.kind == "semi") else None
        semi = r["semi"] if r.kind == "semi" else None
        lab = r["dataset"]["labeled_ids"] if r.kind == "semi" else None
        return _key("fit", r.kind, self.embed_key("train"), g, r["probe"], text, semi, lab)

    def predict_key(self) -> str:
        r = self.recipe
        if r.kind == "ov":
            return _key("predict-ov", self.embed_key("eval"), r["text"])
        g = r["glcc"]
        return _key("predict", self.fit_key(), self.embed_key("eval"), r["combine"], g["k_bar"], g["a_norm"])

    def paths(self) -> dict[str, Path]:
        # after a failed item, downstream outputs go to "-incomplete" folders (redone by every run until the
        # failed items succeed), so that they are never taken for the complete result
        inc = "-incomplete" if self.failures else ""
        p = {"masks": self.work / "masks" / self.mask_key(),
             "predict": self.work / "predict" / (self.predict_key() + inc),
             "eval": self.work / "eval" / f"{self.predict_key()}{inc}.json"}
        for w in self.splits():
            p[f"embed_{w}"] = self.work / "embed" / self.embed_key(w)
        if self.recipe.kind != "ov":
            p["fit"] = self.work / "fit" / (self.fit_key() + inc)
        return p

    def clip(self):
        if self._clip is None:  # seeded, then built (ClipSpec.build): random weights are reproducible
            self._clip = self.clip_spec().build(self.device)
        return self._clip

    def sam_spec(self):
        """The recipe's mask generator as a :class:`tusss.distributed.SamSpec` (what :meth:`generator` builds)."""
        from tusss.distributed.extract import SamSpec
        from tusss.weights import parse_weight_source

        m = self.recipe["masks"]
        return SamSpec(m["sam"], parse_weight_source(m["checkpoint"]), m["preset"], dict(m["overrides"]),
                       seed=self.seed, device=self.device)

    def clip_spec(self):
        """The recipe's DBA-CLIP as a :class:`tusss.distributed.ClipSpec` (what :meth:`clip` builds)."""
        from tusss.distributed.extract import ClipSpec
        from tusss.weights import parse_weight_source

        c = self.recipe["clip"]
        return ClipSpec(c["model"], parse_weight_source(c["weights"], official="openai"), c["preset"],
                        {k: tuple(v) if isinstance(v, list) else v for k, v in c["opts"].items()},
                        seed=self.seed, device=self.device)

    def generator(self):
        if self._gen is None:  # seeded like the Ray actors (SamSpec.build): random weights are reproducible
            self._gen = self.sam_spec().build(self.device)
        return self._gen

    def _ray_session(self) -> None:
        """Connect to / start the Ray cluster of :attr:`ray` once per run."""
        if not self._ray_ready:
            from tusss.distributed import init_ray

            self._ray_owned = init_ray(self.ray.address, num_cpus=self.ray.num_cpus)
            self._ray_ready = True

    def mask_cache(self):
        from tusss.masks.cache import open_mask_cache

        return open_mask_cache(self.paths()["masks"])

    # ------------------------------------------------------------------ stages
    def stage_masks(self) -> str:
        from tusss.masks.cache import MaskCache, cache_masks, read_manifest, write_manifest

        root = self.paths()["masks"]
        need = {(w, i) for w in self.splits() for i in self.ids(w)}
        man = read_manifest(root) if root.is_dir() else None
        if man is not None:
            cache = MaskCache(root, man["config_hash"])
            if all(i in cache for _, i in need):
                return "skipped"
        if self.ray is not None:
            return self._stage_masks_ray(root)
        gen = self.generator()
        cache = MaskCache.for_generator(root, gen)
        write_manifest(root, gen)
        for w in self.splits():
            ds = self.dataset(w)
            with warnings.catch_warnings():  # the failures are reported with the result
                warnings.filterwarnings("ignore", message="cache_masks: ")
                res = cache_masks(gen, [(i, (lambda i=i, ds=ds: ds.image(i))) for i in self.ids(w)], cache,
                                  progress=self.progress, on_error="collect")  # a bad image never stops the run
            self.failures.update({f"masks {w} {i}": msg for i, msg in res["failed"].items()})
            self.log(f"masks {w}: {len(res['generated'])} generated, {len(res['skipped'])} cached, "
                     f"{len(res['failed'])} failed")
        return "done"

    def _stage_masks_ray(self, root: Path) -> str:
        from tusss.distributed import probe_generator, ray_cache_masks
        from tusss.masks.cache import check_manifest, write_manifest

        spec = self.sam_spec()
        self._ray_session()
        info = probe_generator(spec)
        check_manifest(root, info, False)
        for w in self.splits():
            res = ray_cache_masks(spec, self.ids(w), self.dataset(w).image, root, pool=self.ray.pool,
                                  progress=self.progress, info=info)
            self.failures.update({f"masks {w} {i}": rec["error"] for i, rec in res["failed"].items()})
            self.log(f"masks {w} (ray): {len(res['generated'])} generated, {len(res['skipped'])} cached, "
                     f"{len(res['failed'])} failed, actor pids {sorted(res['workers'])}")
        write_manifest(root, info)
        return "done"

    def stage_embed(self, which: str) -> str:
        from tusss.data.store import EmbeddingStore, StoreWriter

        root = self.paths()[f"embed_{which}"]
        ids = self.ids(which)
        try:
            st = EmbeddingStore(root)
            if set(ids) <= set(st.image_ids):
                return "skipped"
        except (InputError, OSError):
            pass
        ds = self.dataset(which)
        if not ids:
            raise InputError(f"{ds.name} split {ds.split!r} has no images")
        cache = self.mask_cache()
        if self.ray is not None:
            from tusss.distributed import probe_clip

            spec = self.clip_spec()
            self._ray_session()
            clip, identity = None, probe_clip(spec)
        else:
            clip = self.clip()
            identity = clip.identity()
        has_gt = ds.label(ids[0]) is not None
        ids_file = self.recipe["dataset"]["train_ids" if which == "train" else "eval_ids"]
        meta = {"dataset": ds.name, "split": ds.split, "root": str(self.root.resolve()),
                "ids_file": str((self.root / ids_file).resolve()) if ids_file else None,
                "recipe": self.recipe.name, "clip": self.recipe["clip"]["model"],
                "weights": self.recipe["clip"]["weights"], "clip_preset": self.recipe["clip"]["preset"],
                "clip_opt": [f"{k}={json.dumps(v)}" for k, v in sorted(self.recipe["clip"]["opts"].items())],
                "mask_config_hash": cache.config_hash, "class_names": list(ds.class_names),
                "has_background": bool(ds.has_background), "embedder": identity}
        if self.ray is not None:
            from tusss.distributed import ray_embed

            res = ray_embed(ds, cache.root, cache.config_hash, root, spec, ids=ids,
                            dtype=self.recipe["clip"]["dtype"], shard_size=self.shard_size, with_gt=has_gt,
                            meta=_strip(meta), pool=self.ray.pool, progress=self.progress)
            self.failures.update({f"embed {which} {i}": rec["error"] for i, rec in res["failed"].items()})
            self.log(f"embed {which} (ray): {len(res['embedded'])} image(s) embedded, {len(res['skipped'])} "
                     f"already stored, {len(res['failed'])} failed, actor pids {sorted(res['workers'])}")
            return "done"
        w = StoreWriter(root, clip.model.visual.output_dim, dtype=self.recipe["clip"]["dtype"],
                        num_classes=ds.num_classes if has_gt else None, shard_size=self.shard_size,
                        meta=_strip(meta))
        done = w.done()
        from tusss.data.embed import embed_into_store
        from tusss.persist import FailureLog

        flog = FailureLog(root, "embed")
        # a bad image is recorded and skipped, the others go on
        n = embed_into_store(clip, ds, ids, cache, w, flog, with_gt=has_gt,
                             on_failure=lambda i, why: self.failures.__setitem__(f"embed {which} {i}", why))
        w.close()
        flog.close()
        self.log(f"embed {which}: {n} image(s) embedded, {len(done)} already stored{flog.summary()}")
        return "done"

    def _store(self, which: str):
        from tusss.data.store import EmbeddingStore
        from tusss.supervision import group_offsets

        st = EmbeddingStore(self.paths()[f"embed_{which}"])
        X = st.embeddings(np.float32)
        meta = st.metadata()
        off = group_offsets(meta.image_id)
        return X, meta, off, [str(meta.image_id[a]) for a in off[:-1]]

    def _ov_segmenter(self):
        from tusss.pipeline import OVSegmenter

        t = self.recipe["text"]
        return OVSegmenter(None, self.clip(), vocabulary=t["vocabulary"], templates=t["templates"] or None,
                           fg_method=fg_method(t["fg"]), bg_method=bg_method(t["bg"]), fill=t["fill"])

    def _text_scores(self, X: np.ndarray, off: np.ndarray) -> np.ndarray:
        """(N, K) open-vocabulary scores of the masks, image by image (val mode: all classes)."""
        seg = self._ov_segmenter()
        logits = self.clip().logits(X, seg.text_embeddings())
        out = np.zeros((len(X), seg.num_classes), np.float32)
        for a, b in zip(off[:-1], off[1:]):
            if b > a:
                out[a:b] = seg.score(logits[a:b])[0]
        return out

    def supervision(self):
        """The typed supervision object of the recipe over the training store (and X, meta)."""
        from tusss.data.datasets import read_ids_file
        from tusss.supervision import FullSupervision, SemiSupervision, WeakSupervision

        r = self.recipe
        X, meta, off, img_ids = self._store("train")
        ds = self.dataset("train")
        has_bg = bool(ds.has_background)
        if meta.gt_frac is None:
            raise InputError(f"the training store of {r.name!r} has no GT fractions")
        if r.kind == "full":
            return FullSupervision(meta.gt_frac, has_bg=has_bg), X, meta
        if r.kind == "semi":
            p = r["dataset"]["labeled_ids"]
            if not p:
                raise InputError(f"semi recipe {r.name!r} needs dataset.labeled_ids (a file of labelled image ids)")
            path = Path(p) if os.path.isabs(p) else self.root / p
            lab = set(read_ids_file(path))
            li = np.array([i in lab for i in img_ids])
            if not li.any():
                raise InputError(f"none of the {len(img_ids)} training images is listed in {path}")
            s = r["semi"]
            z = self._text_scores(X, off) if s["start"] == "ov" else None
            return SemiSupervision(meta.gt_frac, li, zero_shot_scores=z,
                                   balance=None if s["bg_fg_balance"] == "none" else "eq",
                                   balance_semi=s["semi_balance"], has_bg=has_bg), X, meta
        # weak
        from tusss.pipeline import resolve_class_set

        t = r["text"]
        cs = resolve_class_set(vocabulary=t["vocabulary"], templates=t["templates"] or None)
        if cs.bg_mode != "dustbin":
            raise InputError(f"weak supervision needs a vocabulary with background dustbin names, "
                             f"{t['vocabulary']!r} has bg_mode {cs.bg_mode!r}")
        logits = self.clip().logits(X, self.clip().encode_text(list(cs.names), cs.templates))
        return WeakSupervision(logits, weak_image_labels(ds, img_ids), num_classes=ds.num_classes,
                               fg_method=fg_method(t["fg"]), bg_method=bg_method(t["bg"])), X, meta

    def stage_fit(self) -> str:
        from tusss.data.store import EmbeddingStore
        from tusss.errors import CorruptFileError
        from tusss.glcc.model import GLCC

        root = self.paths()["fit"]
        if not self.failures:
            try:
                GLCC.load(root)
                return "skipped"
            except (CorruptFileError, InputError, OSError):
                pass
        sup, X, meta = self.supervision()
        m = GLCC(glcc_config(self.recipe), class_names=list(self.dataset("train").class_names))
        m.fit(X, meta.area, meta.image_id, sup, progress=self.progress)
        info = EmbeddingStore(self.paths()["embed_train"]).index.get("meta", {})
        if isinstance(info.get("embedder"), dict):  # provenance checked by tusss.Predictor (tusss.classify)
            m.provenance = {**info["embedder"], "mask_config_hash": info.get("mask_config_hash")}
        m.save(root)
        self.log(f"fit: GLCC ({self.recipe.kind}) on {len(X)} masks -> {root}")
        return "done"

    def stage_predict(self) -> str:
        from tusss.io import write_label_png
        from tusss.labels import paint_labels
        from tusss.persist import atomic_write_json

        out = self.paths()["predict"]
        marker = out / "done.json"
        if marker.is_file():
            return "skipped"
        r = self.recipe
        X, meta, off, img_ids = self._store("eval")
        cache = self.mask_cache()
        if r.kind == "ov":
            scores = self._text_scores(X, off)
            names = list(self._ov_segmenter().class_names)
            fill = r["text"]["fill"]
        else:
            from tusss.glcc.model import GLCC

            m = GLCC.load(self.paths()["fit"])
            cfg = glcc_config(r)
            m.config.combine, m.config.k_bar, m.config.a_norm = cfg.combine, cfg.k_bar, cfg.a_norm
            scores = np.concatenate([m.predict(X[a:a + 65536]) for a in range(0, len(X), 65536)])
            names, fill = m.class_names, 0
        ds = self.dataset("eval")
        for j, i in enumerate(img_ids):
            a, b = int(off[j]), int(off[j + 1])
            s = scores[a:b]
            labels, conf = s.argmax(1), s.max(1)
            ms = cache.get(i)
            if ms is None:
                raise InputError(f"mask cache {cache.root} has no masks for {i!r}")
            ms = ms.subset(meta.mask_index[a:b])
            write_label_png(out / "labels" / f"{i}.png", paint_labels(ms.masks, labels, ms.level, conf, fill=fill))
            atomic_write_json(out / "masks" / f"{i}.json", {
                "id": i, "num_masks": b - a, "fill": fill, "class_names": names, "recipe": r.name,
                "masks": [{"label": int(lb), "conf": float(c)} for lb, c in zip(labels, conf)]})
        stored = set(img_ids)
        for i in self.ids("eval"):  # images without any (non-empty) mask: every pixel gets the fill label
            if i not in stored and cache.get(i) is not None:
                hw = ds.label(i).shape if ds.label(i) is not None else ds.image(i).shape[:2]
                write_label_png(out / "labels" / f"{i}.png", np.full(hw, fill, np.uint8))
                atomic_write_json(out / "masks" / f"{i}.json", {"id": i, "num_masks": 0, "fill": fill,
                                                                "class_names": names, "masks": []})
        if self.failures:  # not complete: the next run retries the failed items and redoes this stage
            return "done (incomplete)"
        atomic_write_json(marker, {"recipe": r.name, "images": len(self.ids("eval"))})
        self.log(f"predict: {len(self.ids('eval'))} image(s) -> {out}")
        return "done"

    def stage_eval(self) -> tuple[str, dict[str, Any]]:
        from tusss.evaluation import evaluate, json_clean
        from tusss.persist import atomic_write_json

        p = self.paths()["eval"]
        if p.is_file() and not self.failures:
            return "skipped", json.loads(p.read_text())
        pred = self.paths()["predict"]
        ids = [i for i in self.ids("eval") if (pred / "masks" / f"{i}.json").is_file()]  # failed images: left out
        res = evaluate(self.dataset("eval"), pred, self.mask_cache(), ids=ids)
        res.pop("pixel", None)
        if "mask" in res:
            res["mask"].pop("confusion", None)
        res = json_clean(res)
        if self.failures:
            res["incomplete"] = f"{len(ids)} of {len(self.ids('eval'))} images evaluated"
            return "done (incomplete)", res
        atomic_write_json(p, res, indent=1)
        return "done", res

    def run(self) -> RunResult:
        """Run every stage that is not complete yet; returns what was done and the metrics."""
        res = RunResult(self.recipe.name)
        try:
            res.stages["masks"] = self.stage_masks()
            for w in self.splits():
                res.stages[f"embed_{w}"] = self.stage_embed(w)
        finally:
            if self._ray_owned:  # a cluster this run started
                from tusss.distributed import require_ray

                require_ray().shutdown()
            self._ray_ready = self._ray_owned = False
        if self.recipe.kind != "ov":
            res.stages["fit"] = self.stage_fit()
        res.stages["predict"] = self.stage_predict()
        res.stages["eval"], res.metrics = self.stage_eval()
        res.paths = {k: str(v) for k, v in self.paths().items()}
        res.table = format_table(self.recipe, res.metrics)
        res.failures = dict(self.failures)
        if res.failures:
            res.table += (f"\n{len(res.failures)} item(s) failed and were left out (their pixels get the fill "
                          "label; rerun to retry them): " + "; ".join(f"{k}: {v}" for k, v in
                                                                    list(res.failures.items())[:5]))
        return res


def _pct(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * float(x):.1f}"


def format_table(recipe: Recipe, metrics: dict[str, Any]) -> str:
    """The result table: tusss's mIoU and mask F1 beside the paper's figures for the recipe."""
    p = recipe["paper"]
    paper = f"paper ({p['table']})" if p["table"] else "paper"

    def fig(v: float) -> str:
        return "n/a" if not math.isfinite(v) else f"{v:.1f}"

    f1 = metrics.get("mask", {}).get("F1")
    rows = [("metric", "tusss", paper), ("mIoU (%)", _pct(metrics.get("mIoU")), fig(p["miou"])),
            ("mask F1 (%)", _pct(f1), fig(p["f1"]))]
    w = [max(len(r[c]) for r in rows) for c in range(3)]
    lines = [f"{recipe.name} ({recipe.kind}) - {metrics.get('dataset', '')} {metrics.get('split', '')}, "
             f"{metrics.get('num_images', '?')} images"]
    for n, r in enumerate(rows):
        lines.append("  ".join(x.ljust(w[c]) for c, x in enumerate(r)))
        if n == 0:
            lines.append("  ".join("-" * w[c] for c in range(3)))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- tune
@dataclass
class TuneResult:
    """Outcome of :func:`tune`: every tried (path, value, mIoU), the chosen overrides and the best result."""

    trials: list[dict[str, Any]]
    best: dict[str, Any]
    best_result: RunResult
    label: str = "tuned on ground truth"

    def set_args(self) -> list[str]:
        """The winners as ``--set`` arguments."""
        from tusss.recipes.schema import _toml_val

        return [f"{k}={_toml_val(v)}" for k, v in self.best.items()]


def tune(recipe: Recipe, root: str | os.PathLike, work: str | os.PathLike, *, grid: dict[str, list] | None = None,
         **runner_kw: Any) -> TuneResult:
    """The authors' protocol: search the recipe's ``[tune.grid]`` by the best mIoU **on the evaluation split's
    ground truth**, one field after the other in the grid's order (each later search starts from the best
    values so far, as the authors tune each step before the next). Stages that a trial does not change are
    reused from ``work`` (their keys are equal)."""
    grid = dict(recipe["tune"]["grid"] if grid is None else grid)
    if not grid:
        raise InputError(f"recipe {recipe.name!r} has no [tune.grid]: nothing to tune")
    best: dict[str, Any] = {}
    trials: list[dict[str, Any]] = []
    best_res: RunResult | None = None
    for path, values in grid.items():
        scored = []
        for v in values:
            r = recipe.with_overrides({**best, path: v})
            res = RecipeRunner(r, root, work, **runner_kw).run()
            trials.append({"field": path, "value": v, "mIoU": res.miou, "mask_F1": res.mask_f1})
            scored.append((res.miou if math.isfinite(res.miou) else -math.inf, v, res))
        top = max(scored, key=lambda t: t[0])  # first best wins ties (the authors' list order)
        best[path] = top[1]
        best_res = top[2]
    assert best_res is not None
    return TuneResult(trials, best, best_res)


def grid_size(grid: dict[str, list]) -> int:
    """Trials of the field-by-field search (sum of the grid sizes; the full product is not searched)."""
    return sum(len(v) for v in grid.values())

