"""Dataset-scale extraction on Ray Data: SAM masks into a mask cache, DBA-CLIP embeddings into a store.

What runs where (one Ray Data pipeline per command, streamed, in image order)::

    driver          ids to do  ->  [read tasks]  ->  [actor pool]  ->  driver
    tusss masks     skip cached    decode image      SAM generate + MaskCache.put     progress, failures
    tusss embed     skip stored    decode image,     DBA-CLIP embed_masks             StoreWriter.add (in order)
                                   load masks, GT

* Read tasks (``read_cpus`` each, default 0.25) decode images, read cached masks and compute the GT class
  fractions. Models live in an actor pool of ``actors`` actors: ``num_gpus=1`` each where the cluster has GPUs,
  otherwise a fraction of a CPU (``0.5 * cluster CPUs / actors``, at most 1), so the read tasks are never
  starved (a pool that holds every CPU hangs the pipeline).
* The outputs are written through the single-process writers, so a reader cannot tell which path wrote them:
  SAM actors store each image with :meth:`tusss.masks.cache.MaskCache.put` (one atomic file per image, so the
  cache folder must be on storage every node sees); the driver feeds the embeddings to one
  :class:`tusss.data.store.StoreWriter` in the dataset's image order, so the shards, their boundaries and the
  index are those of ``tusss embed`` (each shard is committed atomically by the writer).
* A re-run skips what is done (cached masks; images of committed shards). An image that fails (unreadable
  or corrupt file, no cached masks, an exception in a model) is recorded with its id and reason in the
  output folder's ``failures.jsonl`` by :class:`tusss.persist.FailureLog`, with the reasons the single-process
  commands record, and does not stop the run (unless ``fail_fast``). Progress is a tqdm bar in the driver.

Ray is imported only inside these functions (the optional extra ``tusss[ray]``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tusss.distributed.cluster import cluster_resources, init_ray, require_ray
from tusss.errors import CorruptFileError, InputError, TusssError
from tusss.persist import FailureLog, ItemFailedError, remove_stale_temps

__all__ = ["DistributedError", "PoolConfig", "SamSpec", "ClipSpec", "GeneratorInfo", "probe_clip", "probe_generator",
           "ray_cache_masks", "ray_embed", "failures_path", "read_failures"]

_PICKLE = 5


# ---------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class PoolConfig:
    """Sizes and resources of the Ray pools.

    Attributes:
        actors: model actors (SAM or DBA-CLIP replicas).
        cpus_per_actor: CPUs reserved per actor; None: 1 with GPUs, else ``min(1, 0.5 * cluster CPUs / actors)``.
        gpus_per_actor: GPUs per actor; None: 1 when the cluster has GPUs, else 0 (then the actors run on CPU).
        read_cpus: CPUs reserved per read/decode task.
        images_per_block: images per Ray Data block; None: 1 up to 64 images, then ``ceil(n / 2048)``.
    """

    actors: int = 1
    cpus_per_actor: float | None = None
    gpus_per_actor: float | None = None
    read_cpus: float = 0.25
    images_per_block: int | None = None

    def __post_init__(self) -> None:
        if int(self.actors) < 1:
            raise InputError(f"the actor pool needs at least 1 actor, got {self.actors}")
        for name in ("cpus_per_actor", "gpus_per_actor"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v < 0):
                raise InputError(f"{name} must be a finite number >= 0, got {v}")
        if not (math.isfinite(self.read_cpus) and self.read_cpus > 0):
            raise InputError(f"read_cpus must be > 0, got {self.read_cpus}")
        if self.images_per_block is not None and self.images_per_block < 1:
            raise InputError(f"images_per_block must be >= 1, got {self.images_per_block}")

    def resolve(self, cpus: float, gpus: float) -> tuple[float, float]:
        """(CPUs, GPUs) per actor on a cluster with ``cpus`` CPUs and ``gpus`` GPUs in total."""
        g = (1.0 if gpus >= 1 else 0.0) if self.gpus_per_actor is None else float(self.gpus_per_actor)
        if g > gpus + 1e-9:
            raise InputError(f"gpus_per_actor={g} but the Ray cluster has {gpus:g} GPU(s)")
        if self.cpus_per_actor is not None:
            c = float(self.cpus_per_actor)
        elif g > 0:
            c = 1.0
        else:
            c = min(1.0, 0.5 * cpus / self.actors)
        if self.actors * c + self.read_cpus > cpus + 1e-9:
            raise InputError(f"{self.actors} actor(s) x {c:g} CPU + {self.read_cpus:g} CPU for a read task exceed "
                             f"the cluster's {cpus:g} CPU(s): the pipeline would hang; use fewer actors or "
                             "smaller cpus_per_actor")
        return c, g

    def num_blocks(self, n: int) -> int:
        """Ray Data blocks for ``n`` images."""
        per = self.images_per_block or (1 if n <= 64 else math.ceil(n / 2048))
        return max(1, math.ceil(n / per))


def _torch_device(spec_device: str, gpus: float) -> str:
    """Device of a model actor: CUDA when Ray gave it a GPU, else the spec's device ('auto' -> cpu)."""
    if gpus > 0:
        return "cuda"
    return "cpu" if spec_device in ("auto", "") else spec_device


@dataclass(frozen=True)
class SamSpec:
    """How to build the mask generator in a worker (same seeding as ``tusss masks``: seed, then build).

    Attributes:
        model_type: SAM registry name (``vit_h``, ..., ``vit_tiny``); checkpoint: ``"official"``, a path, or
        None (random weights); preset: mask preset; overrides: MaskGenConfig fields; seed: torch seed;
        device: ``"auto"`` (CUDA in GPU actors, else CPU) or a torch device.
    """

    model_type: str = "vit_h"
    checkpoint: str | None = "official"
    preset: str = "tuss"
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"

    def build(self, device: str = "cpu") -> Any:
        """The :class:`tusss.masks.generator.MaskGenerator` (``device`` overrides the spec's)."""
        import torch

        from tusss.masks.generator import MaskGenerator

        torch.manual_seed(self.seed)
        return MaskGenerator.from_pretrained(self.model_type, checkpoint=self.checkpoint, preset=self.preset,
                                             device=device, **self.overrides)


@dataclass(frozen=True)
class ClipSpec:
    """How to build DBA-CLIP in a worker (same seeding as ``tusss embed``: seed, then build).

    Attributes:
        model: open_clip architecture; weights: ``"openai"``, a path, or None (random); preset: DBA-CLIP preset;
        overrides: DBAClipConfig fields; seed: torch seed; device: ``"auto"`` or a torch device.
    """

    model: str = "ViT-B-16"
    weights: str | None = "openai"
    preset: str = "reference"
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"

    def build(self, device: str = "cpu") -> Any:
        """The :class:`tusss.clip.model.DBAClip`."""
        import torch

        from tusss.clip.model import DBAClip

        torch.manual_seed(self.seed)
        return DBAClip.from_pretrained(self.model, weights=self.weights, preset=self.preset, device=device,
                                       **self.overrides)

    def embed_dim(self) -> int:
        """D of the embeddings, from the open_clip model config (no weights are loaded)."""
        import open_clip

        from tusss.clip.tiny import register_model_configs

        register_model_configs()
        cfg = open_clip.get_model_config(self.model)
        if cfg is None or "embed_dim" not in cfg:
            raise InputError(f"unknown open_clip model {self.model!r}; e.g. 'ViT-B-16' or 'tusss-tiny'")
        return int(cfg["embed_dim"])


@dataclass(frozen=True)
class GeneratorInfo:
    """Identity of a mask generator (what the mask-cache manifest records), without holding SAM."""

    config_hash: str
    model_type: str
    weights_id: str
    config_dict: dict[str, Any]

    @property
    def config(self) -> Any:
        """Object with ``to_dict()`` (the shape of ``MaskGenerator.config`` that manifest writers read)."""
        d = self.config_dict

        class _Cfg:
            def to_dict(self) -> dict[str, Any]:
                return dict(d)

        return _Cfg()


def _generator_info(spec: SamSpec) -> GeneratorInfo:
    g = spec.build("cpu")
    return GeneratorInfo(g.config_hash, g.model_type, g.weights_id, g.config.to_dict())


def probe_generator(spec: SamSpec) -> GeneratorInfo:
    """Build the generator once in a Ray task (where the checkpoint lives) and return its identity."""
    ray = require_ray()
    return _get(ray.remote(num_cpus=0.25)(_generator_info).remote(spec))


def _get(ref: Any) -> Any:
    """``ray.get`` that re-raises a tusss error of the remote task as itself (naming the bad input)."""
    ray = require_ray()
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, TusssError):
            raise cause from None
        raise DistributedError(f"a Ray task failed: {' '.join(str(e).split())[-600:]}") from e


def _clip_identity(spec: ClipSpec) -> dict[str, str]:
    return dict(spec.build("cpu").identity())


def probe_clip(spec: ClipSpec) -> dict[str, str]:
    """``DBAClip.identity()`` (model, weights sha256, preset, config hash) of ``spec``, built once in a Ray task."""
    ray = require_ray()
    return _get(ray.remote(num_cpus=0.25)(_clip_identity).remote(spec))


# ---------------------------------------------------------------------------------------------- failures
def failures_path(output: str | os.PathLike) -> Path:
    """The failures file of a run on ``output`` (``failures.jsonl`` in the cache / store folder, written by
    :class:`tusss.persist.FailureLog` exactly as the single-process commands write it)."""
    from tusss.persist import FAILURES

    return Path(output) / FAILURES


def read_failures(output: str | os.PathLike) -> dict[str, str]:
    """``{image id: reason}`` recorded by the last run on ``output`` ({} when nothing failed)."""
    from tusss.persist import FailureLog

    p = failures_path(output)
    return {r["id"]: r["reason"] for r in FailureLog.read(p)} if p.is_file() else {}


def _reason(e: BaseException) -> str:
    """The failure reason the single-process commands record (:meth:`tusss.persist.FailureLog.attempt`)."""
    from tusss.errors import TusssError
    from tusss.persist import one_line

    return one_line(e) if isinstance(e, TusssError) else f"{type(e).__name__}: {one_line(e)}"


# ---------------------------------------------------------------------------------------------- helpers
def _row(row: dict[str, Any], payload: bytes = b"", error: str = "", stage: str = "", status: str = "ok",
         worker: int = -1) -> dict:
    """One pipeline row; ``worker`` = pid of the model actor that handled it (-1: none)."""
    return {"idx": int(row["idx"]), "id": str(row["id"]), "payload": payload, "error": error, "stage": stage,
            "status": status, "worker": int(worker)}


def _set_threads(cpus: float) -> None:
    import torch

    torch.set_num_threads(max(1, int(cpus)))


@contextlib.contextmanager
def _ray_session(address: str | None, num_cpus: int | None) -> Iterator[None]:
    started = init_ray(address, num_cpus=num_cpus)
    try:
        yield
    finally:
        if started:
            require_ray().shutdown()


@contextlib.contextmanager
def _data_context(quiet: bool) -> Iterator[Any]:
    """Ray Data settings for these pipelines (order kept, Ray's own progress bars and INFO logs off: the driver
    shows one tqdm bar; ``quiet`` also drops Ray Data's warnings); restored on exit."""
    ray = require_ray()
    ctx = ray.data.DataContext.get_current()
    old = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    lg = logging.getLogger("ray.data")
    old_level = lg.level
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    lg.setLevel(logging.ERROR if quiet else logging.WARNING)
    try:
        yield ctx
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = old
        lg.setLevel(old_level)


def _in_order(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Yield rows by increasing ``idx`` (a no-op with preserve_order; a guard if a Ray version reorders)."""
    pending: dict[int, dict[str, Any]] = {}
    nxt = 0  # idx runs 0..n-1 over the images to do
    for r in rows:
        pending[int(r["idx"])] = r
        while nxt in pending:
            yield pending.pop(nxt)
            nxt += 1
    for k in sorted(pending):
        yield pending[k]


class DistributedError(TusssError):
    """The Ray pipeline itself failed (an actor could not start, a node died ...); work completed before the
    failure is kept and a re-run resumes after it."""


def _rows(ds: Any, what: str) -> Iterator[dict[str, Any]]:
    """``ds.iter_rows()`` with Ray's own failures (actor construction, lost nodes) turned into one clear error."""
    ray = require_ray()
    try:
        yield from ds.iter_rows()
    except ray.exceptions.RayError as e:
        msg = " ".join(str(e).split())
        raise DistributedError(f"{what}: the Ray pipeline failed ({type(e).__name__}: {msg[-600:]}); the work "
                               "done before it is kept, run the command again to resume") from e


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled)


# ---------------------------------------------------------------------------------------------- masks
def _masks_read(row: dict[str, Any], loader: Callable[[str], np.ndarray], root: str, config_hash: str,
                overwrite: bool) -> dict[str, Any]:
    from tusss.masks.cache import MaskCache

    iid = str(row["id"])
    cache = MaskCache(root, config_hash, overwrite=overwrite)
    try:
        if iid in cache:
            return _row(row, status="skipped")
    except CorruptFileError:
        pass  # an unreadable cache file is regenerated (MaskCache.put replaces it)
    except Exception as e:  # e.g. CacheMismatchError: masks of another configuration
        return _row(row, error=_reason(e), stage="cache")
    try:
        from tusss.validate import check_image

        image = check_image(loader(iid), f"image {iid!r}")
    except Exception as e:
        return _row(row, error=_reason(e), stage="read")
    return _row(row, payload=pickle.dumps(image, protocol=_PICKLE))


class _SamActor:
    """One SAM replica: generates the masks of each decoded image and stores them in the cache."""

    def __init__(self, spec: SamSpec, root: str, config_hash: str, overwrite: bool, cpus: float, gpus: float):
        from tusss.masks.cache import MaskCache

        _set_threads(cpus)
        self.gen = spec.build(_torch_device(spec.device, gpus))
        if self.gen.config_hash != config_hash:
            raise InputError(f"SAM built in a worker has config hash {self.gen.config_hash[:12]}..., the driver "
                             f"expected {config_hash[:12]}... (different weights on this node?)")
        self.cache = MaskCache(root, config_hash, overwrite=overwrite)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["error"] or row["status"] != "ok":
            return row
        try:
            image = pickle.loads(row["payload"])
            ms = self.gen.generate(image)
            self.cache.put(str(row["id"]), ms)
        except Exception as e:
            return _row(row, error=_reason(e), stage="masks")
        return _row(row, payload=pickle.dumps(len(ms), protocol=_PICKLE), worker=os.getpid())


def ray_cache_masks(
    sam: SamSpec,
    ids: Sequence[str],
    loader: Callable[[str], np.ndarray],
    cache_root: str | os.PathLike,
    *,
    overwrite: bool = False,
    pool: PoolConfig | None = None,
    progress: bool = True,
    address: str | None = None,
    num_cpus: int | None = None,
    info: GeneratorInfo | None = None,
    fail_fast: bool = False,
) -> dict[str, Any]:
    """Ray version of :func:`tusss.masks.cache.cache_masks`: the same cache files, written by SAM actors.

    Args:
        sam: how to build the generator in each actor.
        ids: image ids, in order.
        loader: picklable ``loader(id) -> (H, W, 3) uint8`` run in the read tasks (e.g. a dataset's ``image``).
        cache_root: mask cache folder (shared storage on a multi-node cluster).
        overwrite: replace files cached with another configuration (as ``MaskCache(overwrite=True)``).
        pool: actor pool sizes/resources.
        address / num_cpus: cluster to use when Ray is not initialised yet (None: a local loopback cluster).
        info: the generator's identity when already known (else found by :func:`probe_generator`).
        fail_fast: stop at the first failed image (:class:`tusss.persist.ItemFailedError`) instead of going on.

    Returns:
        ``{"generated": [ids], "skipped": [ids], "failed": {id: {"stage", "error"}}, "info": GeneratorInfo,
        "workers": {actor pid: images}, "failures_file": path or None}``.
    """
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise InputError("ray_cache_masks: image ids must be unique")
    pool = pool or PoolConfig()
    root = str(Path(cache_root).expanduser().absolute())
    out: dict[str, Any] = {"generated": [], "skipped": [], "failed": {}, "workers": {}}
    Path(root).mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root)  # hidden leftovers of a killed run
    log = FailureLog(root, "masks", fail_fast=fail_fast)
    with _ray_session(address, num_cpus), _data_context(not progress):
        ray = require_ray()
        res = cluster_resources()
        cpus, gpus = pool.resolve(res.cpus, res.gpus)
        info = info or probe_generator(sam)
        out["info"] = info
        if ids:
            ds = ray.data.from_items([{"idx": k, "id": i} for k, i in enumerate(ids)],
                                     override_num_blocks=pool.num_blocks(len(ids)))
            ds = ds.map(functools.partial(_masks_read, loader=loader, root=root, config_hash=info.config_hash,
                                          overwrite=overwrite), num_cpus=pool.read_cpus)
            ds = ds.map(_SamActor, fn_constructor_kwargs={"spec": sam, "root": root, "config_hash": info.config_hash,
                                                          "overwrite": overwrite, "cpus": cpus, "gpus": gpus},
                        compute=ray.data.ActorPoolStrategy(size=int(pool.actors)), num_cpus=cpus, num_gpus=gpus)
            bar = _bar(len(ids), "SAM masks (ray)", progress)
            try:
                for r in _in_order(_rows(ds, "tusss masks --ray")):
                    if r["error"]:
                        out["failed"][r["id"]] = {"stage": r["stage"], "error": r["error"]}
                        bar.set_postfix(failed=len(out["failed"]))
                        log.record(r["id"], r["error"])  # raises ItemFailedError with fail_fast
                    elif r["status"] == "skipped":
                        out["skipped"].append(r["id"])
                    else:
                        out["generated"].append(r["id"])
                        out["workers"][r["worker"]] = out["workers"].get(r["worker"], 0) + 1
                    bar.update(1)
            finally:
                bar.close()
    log.close()
    out["failures_file"] = log.path if out["failed"] else None
    return out


# ---------------------------------------------------------------------------------------------- embed
def _embed_read(row: dict[str, Any], dataset: Any, root: str, config_hash: str, with_gt: bool) -> dict[str, Any]:
    from tusss.data.embed import cached_storable_masks
    from tusss.data.store import gt_class_fractions
    from tusss.masks.cache import MaskCache

    iid = str(row["id"])
    stage = "masks"
    try:
        ms, keep = cached_storable_masks(MaskCache(root, config_hash), iid)
        stage = "read"
        image = dataset.image(iid)
        gt = None
        if with_gt:
            stage = "label"
            gt = gt_class_fractions(ms.masks, dataset.label(iid), dataset.num_classes)
    except Exception as e:
        return _row(row, error=_reason(e), stage=stage)
    payload = {"image": image, "masks": ms.to_dict(), "keep": keep, "gt": gt}
    return _row(row, payload=pickle.dumps(payload, protocol=_PICKLE))


class _ClipActor:
    """One DBA-CLIP replica: embeds the (non-empty) cached masks of each decoded image."""

    def __init__(self, spec: ClipSpec, dim: int, cpus: float, gpus: float) -> None:
        _set_threads(cpus)
        self.clip = spec.build(_torch_device(spec.device, gpus))
        self.dim = int(dim)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["error"] or row["status"] != "ok":
            return row
        from tusss.data.embed import embed_or_empty
        from tusss.masks.maskset import MaskSet

        try:
            p = pickle.loads(row["payload"])
            ms = MaskSet.from_dict(p["masks"])
            emb = embed_or_empty(self.clip, p["image"], ms.masks, self.dim)
            res = {"emb": emb, "area": ms.area, "level": ms.level, "keep": p["keep"], "gt": p["gt"]}
        except Exception as e:
            return _row(row, error=_reason(e), stage="embed")
        return _row(row, payload=pickle.dumps(res, protocol=_PICKLE), worker=os.getpid())


def ray_embed(
    dataset: Any,
    mask_cache_root: str | os.PathLike,
    mask_config_hash: str,
    out: str | os.PathLike,
    clip: ClipSpec,
    *,
    ids: Sequence[str] | None = None,
    dtype: str = "float16",
    shard_size: int = 65536,
    with_gt: bool = True,
    meta: dict | None = None,
    pool: PoolConfig | None = None,
    progress: bool = True,
    address: str | None = None,
    num_cpus: int | None = None,
    fail_fast: bool = False,
) -> dict[str, Any]:
    """Embed every cached mask of ``dataset`` into the store ``out`` with DBA-CLIP actors (``tusss embed --ray``).

    The store is written by one :class:`tusss.data.store.StoreWriter` in the driver, images added in the order of
    ``ids`` exactly as the single-process ``tusss embed`` adds them (empty masks dropped, ``mask_index`` = their
    index in the cached MaskSet, GT class fractions when ``with_gt``), so both paths write the same shards and index.

    Args:
        dataset: a :class:`tusss.data.datasets.SegDataset` (picklable; read in the read tasks).
        mask_cache_root / mask_config_hash: the mask cache written by ``tusss masks``.
        out: store folder (resumed when it exists: images of committed shards are skipped).
        clip: how to build DBA-CLIP in each actor.
        ids: image ids in store order (default ``dataset.ids``).
        dtype / shard_size / meta: as :class:`StoreWriter`; with_gt: record GT class fractions.
        pool: actor pool sizes/resources; address / num_cpus: cluster used when Ray is not initialised yet.
        fail_fast: stop at the first failed image (the images before it stay stored; the store is incomplete).

    Returns:
        ``{"embedded": [ids], "skipped": [ids already stored], "failed": {id: {"stage", "error"}},
        "workers": {actor pid: images embedded}, "failures_file": path or None}``.
    """
    from tusss.data.store import StoreWriter

    ids = [str(i) for i in (dataset.ids if ids is None else ids)]
    if not ids:
        raise InputError("ray_embed: no images to embed")
    if len(set(ids)) != len(ids):
        raise InputError("ray_embed: image ids must be unique")
    pool = pool or PoolConfig()
    root = str(Path(mask_cache_root).expanduser().absolute())
    dim = clip.embed_dim()
    w = StoreWriter(out, dim, dtype=dtype, num_classes=dataset.num_classes if with_gt else None,
                    shard_size=shard_size, meta=meta)
    remove_stale_temps(out)  # hidden leftovers of a killed run
    log = FailureLog(out, "embed", fail_fast=fail_fast)
    done = w.done()
    todo = [i for i in ids if i not in done]
    res: dict[str, Any] = {"embedded": [], "skipped": [i for i in ids if i in done], "failed": {}, "workers": {}}
    with _ray_session(address, num_cpus), _data_context(not progress):
        ray = require_ray()
        r = cluster_resources()
        cpus, gpus = pool.resolve(r.cpus, r.gpus)
        if todo:
            ds = ray.data.from_items([{"idx": k, "id": i} for k, i in enumerate(todo)],
                                     override_num_blocks=pool.num_blocks(len(todo)))
            ds = ds.map(functools.partial(_embed_read, dataset=dataset, root=root, config_hash=mask_config_hash,
                                          with_gt=with_gt), num_cpus=pool.read_cpus)
            ds = ds.map(_ClipActor, fn_constructor_kwargs={"spec": clip, "dim": dim, "cpus": cpus, "gpus": gpus},
                        compute=ray.data.ActorPoolStrategy(size=int(pool.actors)), num_cpus=cpus, num_gpus=gpus)
            bar = _bar(len(todo), "embed (ray)", progress)
            try:
                for row in _in_order(_rows(ds, "tusss embed --ray")):
                    iid = row["id"]
                    if row["error"]:
                        res["failed"][iid] = {"stage": row["stage"], "error": row["error"]}
                        bar.set_postfix(failed=len(res["failed"]))
                        log.record(iid, row["error"])  # raises ItemFailedError with fail_fast
                    else:
                        p = pickle.loads(row["payload"])
                        try:
                            w.add(iid, p["emb"], area=p["area"], level=p["level"], gt_fractions=p["gt"],
                                  mask_index=p["keep"])
                            res["embedded"].append(iid)
                            res["workers"][row["worker"]] = res["workers"].get(row["worker"], 0) + 1
                        except InputError as e:  # e.g. NaN embeddings: this image only
                            res["failed"][iid] = {"stage": "store", "error": _reason(e)}
                            log.record(iid, res["failed"][iid]["error"])
                    bar.update(1)
            except (ItemFailedError, DistributedError):
                w.flush()  # keep the images done before the bad one / the crash (the store stays incomplete)
                raise
            finally:
                bar.close()
    w.close()
    log.close()
    res["failures_file"] = log.path if res["failed"] else None
    return res
