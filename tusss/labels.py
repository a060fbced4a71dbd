"""Mask <-> pixel label conversions (docs/reference-code.md §1 "vote probabilities", §5 mask->pixel painting).

* :func:`vote_fractions`: for each mask the fraction of its (non-ignored) GT pixels of each class
  (``sp_lb_vote_prob``); :func:`vote_labels` is its argmax (``vote_lb``; an all-ignore mask -> class 0).
* :func:`paint_labels`: masks sorted ascending by (level, conf) and painted in that order, so on overlaps
  the higher level wins, ties broken by higher confidence (then by the later mask index); pixels covered by
  no mask get ``fill`` (0: background for VOC/COCO-Object, class 0 for no-background datasets).
* :func:`masks_json`: the one per-mask JSON schema (``OUT/masks/{id}.json`` of every command that labels
  masks; :func:`tusss.evaluation.evaluate` reads it back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tusss.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from tusss.masks.maskset import MaskSet

__all__ = ["masks_json", "paint_labels", "paint_order", "vote_fractions", "vote_labels"]


def _check_mask_stack(masks: object, name: str = "masks") -> np.ndarray:
    if not isinstance(masks, np.ndarray) or masks.ndim != 3:
        raise InputError(f"{name} must be a (M, H, W) bool array, got {getattr(masks, 'shape', type(masks))}")
    if masks.dtype != np.bool_:
        raise InputError(f"{name} must have dtype bool, got {masks.dtype}")
    return masks


def vote_fractions(masks: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Fraction of GT pixels of each class inside each mask: ``(M, K) float32``.

    Args:
        masks: (M, H, W) bool.
        gt: (H, W) integer GT map, values in [0, K) or ``ignore_index``.
        num_classes: K.

    Row m is ``count_m[c] / sum_c count_m[c]`` over the mask's non-ignored pixels; a mask holding only
    ignored pixels gets an all-zero row (docs/reference-code.md §1, ``sp_lb_vote_prob``).
    """
    masks = _check_mask_stack(masks)
    K = int(num_classes)
    if K < 1:
        raise InputError(f"num_classes must be >= 1, got {num_classes}")
    gt = np.asarray(gt)
    if gt.ndim != 2 or not np.issubdtype(gt.dtype, np.integer):
        raise InputError(f"gt must be a (H, W) integer array, got {gt.dtype} {gt.shape}")
    if gt.shape != masks.shape[1:]:
        raise InputError(f"gt has size {gt.shape} but the masks are {masks.shape[1:]}")
    g = gt.reshape(-1).astype(np.int64)
    bad = ((g < 0) | (g >= K)) & (g != ignore_index)
    if bad.any():
        raise InputError(f"gt holds value {int(g[bad][0])} outside [0, {K}) and not the ignore index {ignore_index}")
    M = masks.shape[0]
    counts = np.zeros((M, K), np.float64)
    valid = g != ignore_index
    flat = masks.reshape(M, -1)
    for m in range(M):
        sel = g[flat[m] & valid]
        if sel.size:
            counts[m] = np.bincount(sel, minlength=K)
    tot = counts.sum(1, keepdims=True)
    out = np.divide(counts, tot, out=np.zeros_like(counts), where=tot > 0)
    return out.astype(np.float32)


def vote_labels(fractions: np.ndarray) -> np.ndarray:
    """``vote_lb``: argmax of :func:`vote_fractions` rows, ``(M,) int64`` (all-zero row -> 0; ties -> lowest id)."""
    f = np.asarray(fractions)
    if f.ndim != 2:
        raise InputError(f"fractions must be (M, K), got {f.shape}")
    if f.shape[0] == 0:
        return np.zeros(0, np.int64)
    return f.argmax(1).astype(np.int64)


def paint_order(level: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """Indices that sort masks ascending by (level, conf), stable (docs/reference-code.md §5 priority rule)."""
    level = np.asarray(level).reshape(-1)
    conf = np.asarray(conf, dtype=np.float64).reshape(-1)
    if level.shape != conf.shape:
        raise InputError(f"level has {level.shape[0]} entries but conf has {conf.shape[0]}")
    if not np.isfinite(conf).all():
        raise InputError("conf contains NaN/inf values")
    return np.lexsort((conf, level))


def paint_labels(
    masks: np.ndarray,
    labels: np.ndarray,
    level: np.ndarray,
    conf: np.ndarray,
    fill: int = 0,
    dtype: type = np.uint8,
) -> np.ndarray:
    """Paint per-mask labels into a pixel map ``(H, W)`` of ``dtype`` (default uint8).

    Args:
        masks: (M, H, W) bool.
        labels: (M,) integer class ids.
        level: (M,) SAM level (0 sub-part, 1 part, 2 whole).
        conf: (M,) float confidence of each label.
        fill: label of pixels covered by no mask.

    Masks are painted in ascending (level, conf) order, later paints overwrite: on overlaps the higher level
    wins, then the higher confidence, then the later index (stable sort).
    """
    masks = _check_mask_stack(masks)
    M, H, W = masks.shape
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != M:
        raise InputError(f"labels has {labels.shape[0]} entries but there are {M} masks")
    if M and not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be integers, got {labels.dtype}")
    if np.asarray(level).reshape(-1).shape[0] != M:
        raise InputError(f"level has {np.asarray(level).size} entries but there are {M} masks")
    info = np.iinfo(dtype)
    lo = min([int(fill), *([int(labels.min())] if M else [])])
    hi = max([int(fill), *([int(labels.max())] if M else [])])
    if lo < info.min or hi > info.max:
        raise InputError(f"labels/fill range {lo}..{hi} does not fit {np.dtype(dtype).name}")
    order = paint_order(level, conf)
    out = np.full((H, W), fill, dtype=dtype)
    for m in order:
        out[masks[m]] = labels[m]
    return out


def masks_json(
    labels: np.ndarray,
    conf: np.ndarray,
    masks: MaskSet,
    class_names: tuple[str, ...] | list[str] | None,
    scores: np.ndarray | None = None,
    **header: Any,
) -> dict[str, Any]:
    """The per-mask JSON document of one image (the one schema of every command that writes mask labels).

    Args:
        labels: (M,) integer class of each mask.
        conf: (M,) float score of the chosen class.
        masks: the :class:`~tusss.masks.maskset.MaskSet` the labels refer to (M masks, in that order).
        class_names: the K class names (``labels`` index them); None when unknown (``class`` is then null).
        scores: optional (M, K) float per-class scores (written as ``"scores"`` of each mask).
        header: leading fields of the document (e.g. ``id``, ``image``, ``fill``, ``mask_config_hash``).

    Returns:
        ``{**header, "image_hw": [H, W], "class_names": [...], "num_masks": M, "masks": [{"index", "label",
        "class", "conf", "level", "area", "bbox_xywh", "predicted_iou"[, "scores"]}, ...]}``.
    """
    labels = np.asarray(labels)
    conf = np.asarray(conf)
    M = len(labels)
    if len(conf) != M or len(masks) != M or (scores is not None and len(scores) != M):
        raise InputError(f"masks_json: {M} labels, {len(conf)} confidences, {len(masks)} masks"
                         + ("" if scores is None else f", {len(scores)} score rows") + " (must all agree)")  # fmt: skip
    out = []
    for m in range(M):
        d: dict[str, Any] = {
            "index": m,
            "label": int(labels[m]),
            "class": None if class_names is None else class_names[int(labels[m])],
            "conf": float(conf[m]),
            "level": int(masks.level[m]),
            "area": int(masks.area[m]),
            "bbox_xywh": [int(x) for x in masks.bbox[m]],
            "predicted_iou": float(masks.predicted_iou[m]),
        }
        if scores is not None:
            d["scores"] = [float(x) for x in scores[m]]
        out.append(d)
    names = None if class_names is None else list(class_names)
    return {**header, "image_hw": list(masks.image_hw), "class_names": names, "num_masks": M,
            "masks": out}  # fmt: skip
