"""On-disk store of mask embeddings for one dataset split (docs/reference-code.md §6.1, §8).

Layout of a store directory::

    index.json                 format, version, dim, dtype, num_classes, shard list, complete flag
    emb_00000.npy              (n, D) float16/float32 embeddings of whole images (memory-mappable)
    meta_00000.npz             image_id (n,) str, mask_index (n,) int32, area (n,) int64, level (n,) int8,
                               [gt_frac (n, K) float32]

Images are never split across shards; masks of an image are contiguous rows. Every file is written through
:mod:`tusss.persist` (temporary name, fsync, ``os.replace``); ``index.json`` is rewritten (also atomically) after
each completed shard, so an interrupted run leaves only complete shards visible and a resumed
:class:`StoreWriter` skips their images (:meth:`StoreWriter.done`). The writer takes plain arrays, so it
is independent of CLIP.

Readers never load the whole store unless asked: :meth:`EmbeddingStore.shard` memory-maps one shard,
:meth:`EmbeddingStore.iter_shards` walks them, :meth:`EmbeddingStore.embeddings` fills one (N, D) array.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tusss.errors import CorruptFileError, InputError
from tusss.persist import atomic_save_npy, atomic_save_npz, atomic_write_text, corrupt, load_npy, load_npz, read_json
from tusss.validate import check_finite

__all__ = ["StoreWriter", "EmbeddingStore", "ShardMeta", "gt_class_fractions", "STORE_VERSION"]

STORE_VERSION = 1
INDEX = "index.json"


def gt_class_fractions(masks: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Reference §1 ``sp_lb_vote_prob`` (the per-mask metadata of a store): (M, K) float32 fraction of the GT
    pixels of each class inside each mask, ``ignore_index`` left out, all-zero rows for all-ignore masks.
    Delegates to :func:`tusss.labels.vote_fractions` (one home per concept)."""
    from tusss.labels import vote_fractions

    return vote_fractions(masks, gt, num_classes, ignore_index=ignore_index)


_FIX = "re-run `tusss embed` to rewrite the store (delete the folder first if the index is damaged)"


def _read_index(root: Path) -> dict:
    p = root / INDEX
    if not root.is_dir():
        raise InputError(f"embedding store {root} does not exist")
    if not p.is_file():
        raise CorruptFileError(f"{root} has no {INDEX}: not an embedding store (or nothing was written yet); "
                               "run `tusss embed` to write it")
    idx = read_json(p, what="embedding-store index", fix=_FIX)
    if not isinstance(idx, dict) or idx.get("format") != "tusss-embedding-store":
        raise corrupt(p, "is not a tusss embedding-store index", _FIX)
    if idx.get("version") != STORE_VERSION:
        raise corrupt(p, f"has version {idx.get('version')!r}, this tusss reads {STORE_VERSION}", _FIX)
    for key in ("dim", "dtype", "shards", "num_classes"):
        if key not in idx:
            raise corrupt(p, f"lacks the field {key!r}", _FIX)
    try:
        ok = (isinstance(idx["dim"], int) and idx["dim"] >= 1 and idx["dtype"] in ("float16", "float32")
              and isinstance(idx["shards"], list)
              and all(isinstance(s, dict) and isinstance(s["emb"], str) and isinstance(s["meta"], str)
                      and isinstance(s["rows"], int) and s["rows"] >= 0 and isinstance(s["images"], list)
                      for s in idx["shards"]))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise corrupt(p, "has a malformed dim, dtype or shard list", _FIX)
    return idx


class StoreWriter:
    """Append per-image embeddings to a store, shard by shard (resumable).

    Args:
        root: store directory (created).
        dim: embedding dimension D.
        dtype: "float32" (default: the authors store float32 embeddings, docs/reference-code.md §8) or "float16" on
        disk.
        num_classes: K of the GT fractions (None: no GT in this split).
        shard_size: rows per shard (a shard is closed at the first image boundary past this).
        meta: free-form JSON-able info recorded in the index (model, preset, mask config hash...).

    Reopening an existing store resumes it (``dim``/``dtype``/``num_classes`` must match); images of an
    unfinished shard were never visible and must be added again (see :meth:`done`).
    """

    def __init__(self, root: str | os.PathLike, dim: int, *, dtype: str = "float32", num_classes: int | None = None,
                 shard_size: int = 65536, meta: dict | None = None) -> None:
        if dtype not in ("float16", "float32"):
            raise InputError(f"store dtype must be 'float16' or 'float32', got {dtype!r}")
        if dim < 1 or shard_size < 1:
            raise InputError(f"dim ({dim}) and shard_size ({shard_size}) must be >= 1")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.dim, self.dtype, self.num_classes, self.shard_size = int(dim), dtype, num_classes, int(shard_size)
        if (self.root / INDEX).exists():
            idx = _read_index(self.root)
            if (idx["dim"], idx["dtype"], idx["num_classes"]) != (self.dim, dtype, num_classes):
                raise InputError(f"store {self.root} holds dim={idx['dim']} dtype={idx['dtype']} "
                                 f"num_classes={idx['num_classes']}, asked dim={dim} dtype={dtype} "
                                 f"num_classes={num_classes}")
            self._index = idx
            self._index["complete"] = False
            for s in idx["shards"]:
                for f in (s["emb"], s["meta"]):
                    if not (self.root / f).is_file():
                        raise corrupt(self.root / f, f"listed in {INDEX} but missing", _FIX)
            self._done = {str(i) for s in idx["shards"] for i in s["images"]}
        else:
            self._index = {"format": "tusss-embedding-store", "version": STORE_VERSION, "dim": self.dim,
                           "dtype": dtype, "num_classes": num_classes, "shards": [], "complete": False,
                           "meta": meta or {}}
            self._done = set()
            self._write_index()
        self._buf: list[tuple[str, np.ndarray, dict[str, np.ndarray]]] = []
        self._buf_rows = 0

    def done(self) -> set[str]:
        """Image ids already stored in completed shards (skip them when resuming)."""
        return set(self._done)

    def add(self, image_id: str | int, embeddings: np.ndarray, *, area: np.ndarray, level: np.ndarray | None = None,
            gt_fractions: np.ndarray | None = None, mask_index: np.ndarray | None = None) -> None:
        """Queue one image's masks.

        Args:
            image_id: the image's id (stored as str).
            embeddings: (M, D) float.
            area: (M,) int mask areas; level: (M,) int SAM levels (default 0).
            gt_fractions: (M, K) GT class fractions (required iff the store has num_classes).
            mask_index: (M,) index of each mask in the image's MaskSet (default 0..M-1).
        """
        iid = str(image_id)
        if iid in self._done or any(b[0] == iid for b in self._buf):
            raise InputError(f"image {iid!r} was already added to {self.root}")
        e = np.asarray(embeddings)
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise InputError(f"embeddings of image {iid!r} must be (M, {self.dim}), got {e.shape}")
        check_finite(e, f"embeddings of image {iid!r}")
        M = e.shape[0]
        meta = {
            "area": np.asarray(area, np.int64).reshape(-1),
            "level": np.zeros(M, np.int8) if level is None else np.asarray(level, np.int8).reshape(-1),
            "mask_index": np.arange(M, dtype=np.int32) if mask_index is None else np.asarray(mask_index, np.int32),
        }
        for k, v in meta.items():
            if v.shape != (M,):
                raise InputError(f"{k} of image {iid!r} has shape {v.shape}, expected ({M},)")
        if self.num_classes is not None:
            if gt_fractions is None:
                raise InputError(f"store {self.root} records GT fractions: gt_fractions of image {iid!r} missing")
            g = np.asarray(gt_fractions, np.float32)
            if g.shape != (M, self.num_classes):
                raise InputError(f"gt_fractions of image {iid!r} must be ({M}, {self.num_classes}), got {g.shape}")
            meta["gt_frac"] = g
        elif gt_fractions is not None:
            raise InputError(f"store {self.root} was created without num_classes: cannot record gt_fractions")
        self._buf.append((iid, e.astype(self.dtype), meta))
        self._buf_rows += M
        if self._buf_rows >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the queued images as one shard (no-op when nothing is queued)."""
        if not self._buf:
            return
        i = len(self._index["shards"])
        emb_name, meta_name = f"emb_{i:05d}.npy", f"meta_{i:05d}.npz"
        emb = np.concatenate([b[1] for b in self._buf])
        ids = np.concatenate([np.full(len(b[1]), b[0], dtype=object) for b in self._buf]).astype(str)
        meta = {k: np.concatenate([b[2][k] for b in self._buf]) for k in self._buf[0][2]}
        atomic_save_npy(self.root / emb_name, emb)
        atomic_save_npz(self.root / meta_name, image_id=ids, **meta)
        self._index["shards"].append({"emb": emb_name, "meta": meta_name, "rows": int(emb.shape[0]),
                                      "images": [b[0] for b in self._buf]})
        self._write_index()
        self._done.update(b[0] for b in self._buf)
        self._buf, self._buf_rows = [], 0

    def close(self) -> None:
        """Flush and mark the store complete."""
        self.flush()
        self._index["complete"] = True
        self._write_index()

    def _write_index(self) -> None:
        atomic_write_text(self.root / INDEX, json.dumps(self._index))

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        # on an exception (Ctrl-C included) the queued partial shard is dropped: never visible


def _load_meta(root: Path, shard: dict) -> dict[str, np.ndarray]:
    return load_npz(root / shard["meta"], what="embedding-store metadata shard", fix=_FIX)


@dataclass
class ShardMeta:
    """Per-mask metadata of a slice of the store (all arrays (n,)-long; gt_frac (n, K) or None)."""

    image_id: np.ndarray
    mask_index: np.ndarray
    area: np.ndarray
    level: np.ndarray
    gt_frac: np.ndarray | None


class EmbeddingStore:
    """Read-only view of a store written by :class:`StoreWriter`.

    Args:
        root: store directory.
        require_complete: refuse a store whose writer did not :meth:`StoreWriter.close` (default True).
    """

    def __init__(self, root: str | os.PathLike, require_complete: bool = True) -> None:
        self.root = Path(root)
        self.index = _read_index(self.root)
        if require_complete and not self.index.get("complete", False):
            raise CorruptFileError(f"embedding store {self.root} is incomplete (interrupted `tusss embed`?): "
                                   "rerun the command to resume it")
        self.shards = self.index["shards"]
        self.dim = int(self.index["dim"])
        self.dtype = np.dtype(self.index["dtype"])
        self.num_classes = self.index["num_classes"]
        rows = [int(s["rows"]) for s in self.shards]
        self.offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        if self.num_rows == 0:
            raise InputError(f"embedding store {self.root} is empty (no masks)")

    @property
    def num_rows(self) -> int:
        """N, total masks."""
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return self.num_rows

    @property
    def image_ids(self) -> list[str]:
        """Image ids in store order."""
        return [i for s in self.shards for i in s["images"]]

    def shard(self, i: int, mmap: bool = True) -> np.ndarray:
        """(n_i, D) embeddings of shard i (memory-mapped by default)."""
        s = self.shards[i]
        p = self.root / s["emb"]
        a = load_npy(p, what="embedding shard", mmap=mmap, fix=_FIX)
        if a.shape != (int(s["rows"]), self.dim) or a.dtype != self.dtype:
            raise corrupt(p, f"has shape {a.shape} {a.dtype}, index says ({s['rows']}, {self.dim}) {self.dtype}",
                          _FIX)
        if not mmap and a.size and not np.isfinite(a).all():
            raise corrupt(p, "embedding shard holds NaN or infinite values", _FIX)
        return a

    def shard_meta(self, i: int) -> ShardMeta:
        """Metadata of shard i."""
        m = _load_meta(self.root, self.shards[i])
        n = int(self.shards[i]["rows"])
        p = self.root / self.shards[i]["meta"]
        for k in ("image_id", "mask_index", "area", "level"):
            if k not in m or m[k].ndim != 1 or m[k].shape[0] != n:
                raise corrupt(p, f"field {k!r} missing or not {n} rows", _FIX)
        g = m.get("gt_frac")
        if self.num_classes is not None and (g is None or g.shape != (n, int(self.num_classes))):
            raise corrupt(p, f"field 'gt_frac' missing or not ({n}, {self.num_classes})", _FIX)
        if g is not None and g.size and not np.isfinite(g).all():
            raise corrupt(p, "field 'gt_frac' holds NaN or infinite values", _FIX)
        return ShardMeta(m["image_id"], m["mask_index"], m["area"], m["level"], m.get("gt_frac"))

    def iter_shards(self, mmap: bool = True) -> Iterator[tuple[np.ndarray, ShardMeta]]:
        """Yield (embeddings, metadata) shard by shard."""
        for i in range(len(self.shards)):
            yield self.shard(i, mmap=mmap), self.shard_meta(i)

    def embeddings(self, dtype: str | np.dtype = np.float32, out: np.ndarray | None = None) -> np.ndarray:
        """All embeddings as one (N, D) array (filled shard by shard; ``out`` may be a memmap)."""
        if out is None:
            out = np.empty((self.num_rows, self.dim), dtype)
        elif out.shape != (self.num_rows, self.dim):
            raise InputError(f"out must be ({self.num_rows}, {self.dim}), got {out.shape}")
        for i in range(len(self.shards)):
            part = out[self.offsets[i]:self.offsets[i + 1]]
            part[...] = self.shard(i)
            if part.size and not np.isfinite(part).all():
                raise corrupt(self.root / self.shards[i]["emb"], "embedding shard holds NaN or infinite values", _FIX)
        return out

    def metadata(self) -> ShardMeta:
        """Metadata of all masks, concatenated (small next to the embeddings)."""
        ms = [self.shard_meta(i) for i in range(len(self.shards))]
        gt = None if self.num_classes is None else np.concatenate([m.gt_frac for m in ms])
        return ShardMeta(np.concatenate([m.image_id for m in ms]), np.concatenate([m.mask_index for m in ms]),
                         np.concatenate([m.area for m in ms]), np.concatenate([m.level for m in ms]), gt)
