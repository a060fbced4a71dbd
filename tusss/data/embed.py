"""Embedding a dataset's cached SAM masks into an :class:`tusss.data.store.EmbeddingStore`: the one loop behind
``tusss embed`` and the recipe runner's embed stage, and the per-image rules that ``tusss embed --ray`` applies
in its read tasks and DBA-CLIP actors (:mod:`tusss.distributed.extract`), so that every path writes the same
rows.

Per image: the cached :class:`tusss.masks.maskset.MaskSet` minus its empty masks (:func:`storable_masks`;
``mask_index`` records where each stored row came from), their DBA-CLIP embeddings (:func:`embed_or_empty`),
and, when the dataset has labels, each mask's ground-truth class fractions
(:func:`tusss.data.store.gt_class_fractions`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from tusss.errors import InputError

__all__ = ["cached_storable_masks", "embed_into_store", "embed_or_empty", "storable_masks"]


def storable_masks(ms: Any) -> tuple[Any, np.ndarray]:
    """The masks a store records for one image: those with at least one pixel.

    Args:
        ms: :class:`tusss.masks.maskset.MaskSet` of M masks.

    Returns:
        (the MaskSet of the M' non-empty masks, (M',) int64 indices of them in ``ms``).
    """
    keep = np.flatnonzero(ms.masks.reshape(len(ms), -1).any(1)) if len(ms) else np.zeros(0, np.int64)
    return ms.subset(keep), keep


def cached_storable_masks(cache: Any, image_id: str) -> tuple[Any, np.ndarray]:
    """:func:`storable_masks` of the masks cached for ``image_id`` in ``cache`` (a
    :class:`tusss.masks.cache.MaskCache`); :class:`InputError` when the cache has none for it (a damaged cache
    file raises :class:`tusss.errors.CorruptFileError` naming it)."""
    ms = cache.get(image_id)
    if ms is None:
        raise InputError(f"mask cache {cache.root} has no masks for {image_id!r}: run `tusss masks` first")
    return storable_masks(ms)


def embed_or_empty(clip: Any, image: np.ndarray, masks: np.ndarray, dim: int) -> np.ndarray:
    """``clip.embed_masks(image, masks)`` (M, D) float32, or a (0, D) array when there are no masks."""
    return np.asarray(clip.embed_masks(image, masks)) if len(masks) else np.zeros((0, int(dim)), np.float32)


def embed_into_store(clip: Any, dataset: Any, ids: Sequence[str], cache: Any, writer: Any, log: Any, *,
                     with_gt: bool, iterate: Callable[[Iterable[str]], Iterable[str]] | None = None,
                     on_failure: Callable[[str, str], None] | None = None,
                     checkpoint: Callable[[], None] | None = None) -> int:
    """Embed the cached masks of ``ids`` into ``writer``, image by image, skipping those already stored.

    Args:
        clip: :class:`tusss.clip.model.DBAClip` (anything with ``embed_masks(image, masks)``).
        dataset: a :class:`tusss.data.datasets.SegDataset` (``image(id)``, ``label(id)``, ``num_classes``).
        ids: image ids in store order.
        cache: :class:`tusss.masks.cache.MaskCache` with the images' masks.
        writer: :class:`tusss.data.store.StoreWriter` (not closed here: the caller closes it).
        log: :class:`tusss.persist.FailureLog`; a failing image is recorded there and skipped (with
            ``fail_fast`` it raises :class:`tusss.persist.ItemFailedError` after the writer flushed the
            images before it).
        with_gt: record each mask's ground-truth class fractions.
        iterate: wraps the id iterable (e.g. a progress bar); on_failure(id, reason): called per failed image;
        checkpoint: called once before the first image and after every embedded image (fault-injection hook).

    Returns:
        the number of images embedded by this call.
    """
    from tusss.data.store import gt_class_fractions
    from tusss.persist import ItemFailedError

    done = writer.done()

    def embed_one(i: str) -> None:
        ms, keep = cached_storable_masks(cache, i)  # a missing or damaged cache entry: this image fails
        emb = embed_or_empty(clip, dataset.image(i), ms.masks, writer.dim)
        gt = gt_class_fractions(ms.masks, dataset.label(i), dataset.num_classes) if with_gt else None
        writer.add(i, emb, area=ms.area, level=ms.level, gt_fractions=gt, mask_index=keep)

    n = 0
    if checkpoint:
        checkpoint()
    try:
        for i in (iterate or iter)(ids):
            if i in done:
                continue
            ok, _ = log.attempt(i, embed_one, i)
            if not ok:
                if on_failure:
                    on_failure(i, log.failures[i])
                continue
            n += 1
            if checkpoint:
                checkpoint()
    except ItemFailedError:
        writer.flush()  # fail-fast: keep the images done before the bad one (the store stays incomplete)
        raise
    return n
