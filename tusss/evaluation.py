"""Evaluation of a folder of predictions against a dataset split: mIoU and mask F1 (docs/reference-code.md §7).

:func:`evaluate` reads what ``tusss segment`` / ``tusss predict`` write (``labels/{id}.png`` and
``masks/{id}.json``); ``tusss eval`` is a thin wrapper around it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tusss.errors import CorruptFileError, InputError

__all__ = ["evaluate", "json_clean"]


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

    Args:
        dataset: a :class:`tusss.data.datasets.SegDataset` with ground truth.
        pred_dir: folder with ``labels/{id}.png`` (or ``{id}.png``) and/or ``masks/{id}.json``.
        mask_cache: a :class:`tusss.masks.cache.MaskCache` holding the masks the JSONs label (enables mask F1).
        ids: image ids to evaluate (default: all of the split).
        progress: show a progress bar.

    Prediction of image ``id``: ``pred_dir/labels/{id}.png`` (or ``pred_dir/{id}.png``); without a PNG the
    map is re-painted from ``pred_dir/masks/{id}.json`` and the cached masks (docs/reference-code.md §5 priority rule).
    Mask F1 needs the JSON (per-mask labels) and the mask cache (per-mask GT votes).

    Returns:
        ``{"dataset", "split", "num_images", "mIoU", "pixel": per-class scores, ["mask": F1, accuracy, ...]}``.
    """
    from tqdm.auto import tqdm

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
    for i in tqdm(ids, total=len(ids), desc="eval", unit="img", disable=not progress):
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


def json_clean(x: Any) -> Any:
    """A JSON-ready copy of ``x``: NaN/inf -> None, numpy scalars -> Python numbers, tuples -> lists (recursive)."""
    if isinstance(x, dict):
        return {k: json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
