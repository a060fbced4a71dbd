"""Evaluation metrics of docs/reference-code.md §7: split-level mIoU and per-mask (macro) F1.

Both follow the authors' confusion-matrix metrics (alchemy_cat ``SegmentationMetric`` /
``ClassificationMetric``):

* confusion matrix ``C[g, p]`` (rows = ground truth, columns = prediction) accumulated over a whole
  split; ground-truth values outside ``[0, K)`` (255 = ignore) are skipped; predictions must lie in
  ``[0, K)`` where the GT is valid.
* ``IoU_c = TP / (TP + FP + FN)``; ``mIoU`` = mean of IoU_c over classes with >= 1 GT pixel.
* ``precision_c = TP / (TP + FP)``, ``recall_c = TP / (TP + FN)``, ``F1_c = 2 P R / (P + R)``, each NaN
  where its denominator is 0 (so F1_c is NaN for a class that is never predicted, never present, or has
  TP = 0); macro values are NaN-means over classes. accuracy = trace / total.
  ``f1_zero`` is the scikit-learn convention instead (F1_c = 2TP / (2TP + FP + FN), 0 when TP = 0,
  averaged over classes present in GT or prediction).
* Mask F1: one sample per SAM mask, prediction = the mask's label, GT = ``vote_lb`` (majority GT class in
  the mask ignoring 255; an all-ignore mask counts as class 0), see :func:`tusss.labels.vote_labels`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tusss.errors import InputError

__all__ = [
    "ConfusionMatrix",
    "MaskF1",
    "SegmentationScores",
    "confusion_matrix",
    "mask_f1",
    "miou",
    "scores_from_confusion",
]


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K) int64`` confusion matrix, rows = GT class, columns = predicted class.

    ``pred`` and ``gt`` are integer arrays of one shape (pixel maps or per-mask label vectors). Entries
    whose GT is outside ``[0, K)`` are ignored; a prediction outside ``[0, K)`` at a valid GT entry raises
    InputError.
    """
    K = int(num_classes)
    if K < 1:
        raise InputError(f"num_classes must be >= 1, got {num_classes}")
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise InputError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    for a, n in ((pred, "prediction"), (gt, "ground truth")):
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise InputError(f"{n} must hold integer class ids, got dtype {a.dtype}")
    g = gt.reshape(-1).astype(np.int64)
    p = pred.reshape(-1).astype(np.int64)
    valid = (g >= 0) & (g < K)
    g, p = g[valid], p[valid]
    if p.size and (p.min() < 0 or p.max() >= K):
        bad = p[(p < 0) | (p >= K)][0]
        raise InputError(f"prediction holds class {int(bad)} outside [0, {K}) where the ground truth is valid")
    return np.bincount(g * K + p, minlength=K * K).reshape(K, K).astype(np.int64)


@dataclass
class SegmentationScores:
    """Scores derived from a confusion matrix (per-class arrays have length K; NaN = undefined)."""

    miou: float
    iou: np.ndarray
    valid: np.ndarray
    accuracy: float
    precision: float
    recall: float
    f1: float
    f1_zero: float
    class_precision: np.ndarray
    class_recall: np.ndarray
    class_f1: np.ndarray
    num_samples: int

    def to_dict(self, class_names: list[str] | tuple[str, ...] | None = None) -> dict:
        """JSON-ready dict (NaN -> None)."""

        def f(x: float) -> float | None:
            return None if not np.isfinite(x) else float(x)

        K = len(self.iou)
        names = list(class_names) if class_names is not None else [str(i) for i in range(K)]
        return {
            "mIoU": f(self.miou),
            "accuracy": f(self.accuracy),
            "precision": f(self.precision),
            "recall": f(self.recall),
            "F1": f(self.f1),
            "F1_zero": f(self.f1_zero),
            "num_samples": int(self.num_samples),
            "per_class": {
                names[c]: {
                    "IoU": f(self.iou[c]),
                    "precision": f(self.class_precision[c]),
                    "recall": f(self.class_recall[c]),
                    "F1": f(self.class_f1[c]),
                    "gt_count": bool(self.valid[c]),
                }
                for c in range(K)
            },
        }


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def scores_from_confusion(cm: np.ndarray) -> SegmentationScores:
    """All metrics of the module docstring from a ``(K, K)`` confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise InputError(f"confusion matrix must be square (K, K), got {cm.shape}")
    tp = np.diag(cm)
    gt_pos = cm.sum(1)
    pred_pos = cm.sum(0)
    fp = pred_pos - tp
    fn = gt_pos - tp
    n = cm.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (tp + fp + fn)
        prec = tp / pred_pos
        rec = tp / gt_pos
        f1 = 2 * prec * rec / (prec + rec)
        f1z = np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    valid = gt_pos > 0
    seen = valid | (pred_pos > 0)
    return SegmentationScores(
        miou=float(iou[valid].mean()) if valid.any() else float("nan"),
        iou=iou,
        valid=valid,
        accuracy=float(tp.sum() / n) if n > 0 else float("nan"),
        precision=_nanmean(prec),
        recall=_nanmean(rec),
        f1=_nanmean(f1),
        f1_zero=float(f1z[seen].mean()) if seen.any() else float("nan"),
        class_precision=prec,
        class_recall=rec,
        class_f1=f1,
        num_samples=int(n),
    )


class ConfusionMatrix:
    """Accumulates a ``(K, K)`` confusion matrix over a split (pixels or masks).

    >>> acc = ConfusionMatrix(21)
    >>> for pred, gt in pairs: acc.update(pred, gt)
    >>> acc.scores().miou
    """

    def __init__(self, num_classes: int) -> None:
        if int(num_classes) < 1:
            raise InputError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """Add one image (or one batch of masks); returns that item's own confusion matrix."""
        cm = confusion_matrix(pred, gt, self.num_classes)
        self.matrix += cm
        return cm

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another accumulator's counts (e.g. from a parallel worker)."""
        if other.num_classes != self.num_classes:
            raise InputError(f"cannot merge a {other.num_classes}-class matrix into a {self.num_classes}-class one")
        self.matrix += other.matrix
        return self

    def reset(self) -> None:
        self.matrix[:] = 0

    def scores(self) -> SegmentationScores:
        return scores_from_confusion(self.matrix)

    @property
    def miou(self) -> float:
        return self.scores().miou


def miou(preds: list[np.ndarray] | np.ndarray, gts: list[np.ndarray] | np.ndarray, num_classes: int) -> float:
    """mIoU over a split given matching lists of prediction and GT maps (docs/reference-code.md §7)."""
    if isinstance(preds, np.ndarray) and isinstance(gts, np.ndarray) and preds.shape == gts.shape:
        preds, gts = [preds], [gts]
    if len(preds) != len(gts):
        raise InputError(f"{len(preds)} predictions but {len(gts)} ground-truth maps")
    acc = ConfusionMatrix(num_classes)
    for p, g in zip(preds, gts):
        acc.update(p, g)
    return acc.scores().miou


@dataclass
class MaskF1:
    """Per-mask classification scores (docs/reference-code.md §7 "F1 on SAM masks")."""

    f1: float
    accuracy: float
    precision: float
    recall: float
    f1_zero: float
    class_f1: np.ndarray
    confusion: np.ndarray


def mask_f1(pred_labels: np.ndarray, vote_lb: np.ndarray, num_classes: int) -> MaskF1:
    """Macro F1 of per-mask labels ``pred_labels (M,)`` against ``vote_lb (M,)`` (each mask counts once).

    Pass the masks of a whole split concatenated (or accumulate a :class:`ConfusionMatrix` yourself).
    ``vote_lb`` must lie in ``[0, K)`` (vote labels never hold 255).
    """
    v = np.asarray(vote_lb)
    if v.size and (v.min() < 0 or v.max() >= num_classes):
        raise InputError(f"vote_lb must lie in [0, {num_classes}), got {v.min()}..{v.max()}")
    cm = confusion_matrix(pred_labels, v, num_classes)
    s = scores_from_confusion(cm)
    return MaskF1(
        f1=s.f1,
        accuracy=s.accuracy,
        precision=s.precision,
        recall=s.recall,
        f1_zero=s.f1_zero,
        class_f1=s.class_f1,
        confusion=cm,
    )
