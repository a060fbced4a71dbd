"""Soft pseudo-labels P^c per supervision type (paper §4.2, docs/reference-code.md §6.1-6.2).

All tables are over the N training masks stacked image by image (``offsets``: rows
``offsets[i]:offsets[i+1]`` belong to image i) and K dataset classes (class 0 = background when
``has_bg``).

- full: P^c = Y = GT class fractions of each mask (reference ``sp_lb_vote_prob``).
- semi: labelled images' rows = GT fractions; unlabelled rows = zeros (VOC "01启") or zero-shot scores
  (COCO "ov启"); optional ``semi_balance`` (labelled and unlabelled total masses made equal) and
  ``bg_fg_balance='eq'`` (bg column and fg columns made equal in total mass).
- weak: zero-shot logits over fg names + dustbin bg names, softmax over all names, restricted to the image
  classes, per-image min-max, bg = (1 - max)^p (docs/reference-code.md §5 via :mod:`tusss.scoring`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tusss.errors import InputError
from tusss.scoring import BgMethod, FgMethod, seed_table
from tusss.validate import check_finite

__all__ = [
    "Supervision", "group_offsets", "full_supervision", "semi_supervision", "weak_supervision",
    "bg_fg_balance", "semi_balance", "prob2soft_label", "class_sets_to_mask",
    "FullSupervision", "SemiSupervision", "WeakSupervision", "SupervisionSpec", "make_supervision_spec",
]

KINDS = ("full", "semi", "weak")


@dataclass
class Supervision:
    """Soft pseudo-labels and what is known about each mask.

    Attributes:
        kind: "full" | "semi" | "weak".
        Pc: (N, K) float32 initial soft labels P^c.
        offsets: (I + 1,) int64 image boundaries.
        class_sets: per image, the candidate fg classes (fg indices, i.e. dataset id - 1 with a bg class),
            or None for "all classes" (unlabelled images / val mode).
        labeled: (N,) bool rows whose GT fractions are known.
        gt: (N, K) float32 GT fractions (rows of unlabelled masks are zeros) or None.
        has_bg: class 0 is background.
    """

    kind: str
    Pc: np.ndarray
    offsets: np.ndarray
    class_sets: list[np.ndarray | None]
    labeled: np.ndarray
    gt: np.ndarray | None
    has_bg: bool = True

    @property
    def num_classes(self) -> int:
        return int(self.Pc.shape[1])

    def cls_lb(self) -> np.ndarray:
        """(N, K) bool: classes allowed per mask (the image's class set, bg always; all when unknown)."""
        return class_sets_to_mask(self.class_sets, self.offsets, self.num_classes, self.has_bg)


def group_offsets(image_ids: Sequence | np.ndarray) -> np.ndarray:
    """(N,) image ids, grouped (each image's masks contiguous) -> (I + 1,) int64 offsets.

    Raises InputError if an image's masks are not contiguous.
    """
    ids = np.asarray(image_ids)
    if ids.ndim != 1:
        raise InputError(f"image_ids must be 1-D, got shape {ids.shape}")
    if ids.size == 0:
        return np.zeros(1, np.int64)
    change = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    starts = np.concatenate([[0], change])
    if np.unique(ids[starts]).size != starts.size:
        raise InputError("image_ids are not grouped: the masks of each image must be contiguous rows")
    return np.concatenate([starts, [ids.size]]).astype(np.int64)


def class_sets_to_mask(class_sets: Sequence[np.ndarray | None], offsets: np.ndarray, K: int, has_bg: bool
                       ) -> np.ndarray:
    """Per-image fg class sets -> (N, K) bool allowed-class mask (bg column always True with a bg)."""
    N = int(offsets[-1])
    m = np.zeros((N, K), bool)
    shift = 1 if has_bg else 0
    for i, cs in enumerate(class_sets):
        a, b = int(offsets[i]), int(offsets[i + 1])
        if cs is None:
            m[a:b] = True
            continue
        m[a:b, np.asarray(cs, np.int64) + shift] = True
        if has_bg:
            m[a:b, 0] = True
    return m


def _check_table(x: np.ndarray, name: str, N: int | None = None, K: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(f"{name} must be (N, K), got shape {x.shape}")
    if N is not None and x.shape[0] != N:
        raise InputError(f"{name} has {x.shape[0]} rows, expected N = {N}")
    if K is not None and x.shape[1] != K:
        raise InputError(f"{name} has {x.shape[1]} classes, expected K = {K}")
    check_finite(x, name)
    return x.astype(np.float32)


def _check_fractions(gt: np.ndarray, name: str = "gt_fractions") -> np.ndarray:
    gt = _check_table(gt, name)
    if gt.size and (gt.min() < 0 or (gt.sum(1) > 1 + 1e-4).any()):
        raise InputError(f"{name} must be class fractions in [0, 1] with rows summing to <= 1")
    return gt


def bg_fg_balance(Y: np.ndarray, method: str | None = "eq") -> np.ndarray:
    """Scale column 0 and columns 1..K-1 so that their total masses are equal (mean preserved)."""
    if method is None:
        return Y
    if method != "eq":
        raise InputError(f"bg_fg_balance must be 'eq' or None, got {method!r}")
    Y = np.array(Y, dtype=np.float32, copy=True)
    b, f = float(Y[:, 0].sum()), float(Y[:, 1:].sum())
    if b > 0 and f > 0:
        m = 0.5 * (b + f)
        Y[:, 0] *= m / b
        Y[:, 1:] *= m / f
    return Y


def semi_balance(Y: np.ndarray, labeled: np.ndarray, ratio: float = 1.0) -> np.ndarray:
    """Scale labelled and unlabelled rows so that mass(labelled) / mass(unlabelled) = ratio (mean kept)."""
    Y = np.array(Y, dtype=np.float32, copy=True)
    lab, unl = float(Y[labeled].sum()), float(Y[~labeled].sum())
    if lab > 0 and unl > 0:
        tot = lab + unl
        Y[labeled] *= (tot * ratio / (1 + ratio)) / lab
        Y[~labeled] *= (tot / (1 + ratio)) / unl
    return Y


def prob2soft_label(scores: np.ndarray, cls_lb: np.ndarray, gamma: float = 100.0) -> np.ndarray:
    """Probe targets from a score table: ``softmax(gamma · score)`` over the allowed classes
    (docs/reference-code.md §6.1 ``prob2soft_lb={'norm': 'softmax', 'gamma': 100}``).
    Rows without an allowed class are zeros."""
    z = np.where(cls_lb, gamma * np.asarray(scores, dtype=np.float64), -np.inf)
    m = z.max(1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(z - m)
    s = e.sum(1, keepdims=True)
    return np.divide(e, s, out=np.zeros_like(e), where=s > 0).astype(np.float32)


def full_supervision(gt_fractions: np.ndarray, offsets: np.ndarray, has_bg: bool = True) -> Supervision:
    """Full supervision: P^c = Y = GT class fractions (N, K)."""
    gt = _check_fractions(gt_fractions)
    n_img = len(offsets) - 1
    sets = [_present(gt[offsets[i]:offsets[i + 1]], has_bg) for i in range(n_img)]
    return Supervision("full", gt.copy(), np.asarray(offsets, np.int64), sets, np.ones(len(gt), bool), gt, has_bg)


def _present(gt_rows: np.ndarray, has_bg: bool) -> np.ndarray:
    cols = np.flatnonzero((gt_rows > 1e-6).any(0))
    return cols[cols > 0] - 1 if has_bg else cols


def semi_supervision(
    gt_fractions: np.ndarray,
    labeled_images: np.ndarray,
    offsets: np.ndarray,
    *,
    zero_shot_scores: np.ndarray | None = None,
    balance: str | None = "eq",
    balance_semi: bool | None = None,
    has_bg: bool = True,
) -> Supervision:
    """Semi supervision.

    Args:
        gt_fractions: (N, K) GT fractions (only the labelled images' rows are read).
        labeled_images: (I,) bool, which images are labelled.
        offsets: (I + 1,) image boundaries.
        zero_shot_scores: (N, K) scores for the unlabelled rows (COCO "ov启"), or None for zeros (VOC "01启").
        balance: ``bg_fg_balance`` ('eq' or None).
        balance_semi: labelled / unlabelled mass balancing; default True iff zero-shot scores are given.
    """
    gt = _check_fractions(gt_fractions)
    li = np.asarray(labeled_images, bool)
    if li.shape != (len(offsets) - 1,):
        raise InputError(f"labeled_images must be ({len(offsets) - 1},) bool, got {li.shape}")
    if not li.any():
        raise InputError("semi supervision needs at least one labelled image")
    labeled = np.repeat(li, np.diff(offsets))
    gt = np.where(labeled[:, None], gt, 0.0).astype(np.float32)
    Pc = gt.copy()
    if zero_shot_scores is not None:
        z = _check_table(zero_shot_scores, "zero_shot_scores", len(gt), gt.shape[1])
        Pc[~labeled] = z[~labeled]
    if balance_semi is None:
        balance_semi = zero_shot_scores is not None
    if balance_semi:
        Pc = semi_balance(Pc, labeled)
    if has_bg:
        Pc = bg_fg_balance(Pc, balance)
    sets = [_present(gt[offsets[i]:offsets[i + 1]], has_bg) if li[i] else None for i in range(len(li))]
    return Supervision("semi", Pc, np.asarray(offsets, np.int64), sets, labeled, gt, has_bg)


def weak_supervision(
    zero_shot_logits: np.ndarray,
    image_labels: Sequence[Sequence[int] | np.ndarray],
    offsets: np.ndarray,
    num_classes: int,
    *,
    fg_method: FgMethod | None = None,
    bg_method: BgMethod | None = None,
    variant: str = "reference",
) -> Supervision:
    """Weak (image-level) supervision: P^c from zero-shot logits restricted to the image classes.

    ``variant="paper"`` is the paper's ``softmax(XWᵀ ⊙ Y − c(1 − Y))`` with c → ∞: a softmax over the image's
    classes only (no dustbins, no min-max); the background column (not described in the paper) is still
    ``(1 - max)^p``.

    Args:
        zero_shot_logits: (N, C) 100·cos logits over C >= K - 1 names: the K - 1 fg class names first, then
            the background dustbin names (docs/reference-code.md §4).
        image_labels: per image, its fg classes (fg indices 0..K-2).
        offsets: (I + 1,) image boundaries.
        num_classes: K (background included).
        fg_method: default softmax γ=1 over all names (bypath), per-image min-max (reference).
        bg_method: default ``pow`` with p = 1 (the reference tunes p on train GT among {1, 2, 3, .5, ...}).
    """
    z = _check_table(zero_shot_logits, "zero_shot_logits")
    if len(image_labels) != len(offsets) - 1:
        raise InputError(f"image_labels has {len(image_labels)} images, offsets {len(offsets) - 1}")
    sets = []
    for i, lb in enumerate(image_labels):
        a = np.asarray(lb, dtype=np.int64).reshape(-1)
        if a.size and (a.min() < 0 or a.max() >= num_classes - 1):
            raise InputError(f"image_labels[{i}] = {a.tolist()} out of range [0, {num_classes - 1})")
        sets.append(np.unique(a))
    if variant not in ("reference", "paper"):
        raise InputError(f"variant must be 'reference' or 'paper', got {variant!r}")
    default_fg = FgMethod(softmax=1.0, norm=True) if variant == "reference" else \
        FgMethod(softmax=1.0, norm=False, bypath_suppress=False)
    r = seed_table(z, offsets, sets, num_classes, fg_method=fg_method or default_fg,
                   bg_method=bg_method or BgMethod("pow", pow=1.0))
    N = z.shape[0]
    return Supervision("weak", r.scores, np.asarray(offsets, np.int64), sets, np.zeros(N, bool), None, True)


# ---------------------------------------------------------------------------------------------- typed specs
@dataclass
class FullSupervision:
    """Full supervision for :meth:`tusss.glcc.model.GLCC.fit`.

    Attributes:
        gt_fractions: (N, K) float GT class fractions of every training mask.
        has_bg: class 0 is background.
    """

    gt_fractions: np.ndarray
    has_bg: bool = True

    kind = "full"

    def build(self, offsets: np.ndarray, num_classes: int | None = None) -> Supervision:
        """The :class:`Supervision` tables over the images ``offsets`` ((I + 1,) int64)."""
        return full_supervision(self.gt_fractions, offsets, has_bg=self.has_bg)


@dataclass
class SemiSupervision:
    """Semi supervision (see :func:`semi_supervision`).

    Attributes:
        gt_fractions: (N, K) float GT fractions (only the labelled images' rows are read).
        labeled_images: (I,) bool, which images are labelled.
        zero_shot_scores: (N, K) float scores for the unlabelled rows (COCO "ov启"), None for zeros (VOC "01启").
        balance: ``bg_fg_balance`` ('eq' or None).
        balance_semi: labelled / unlabelled mass balancing (None: True iff zero-shot scores are given).
        has_bg: class 0 is background.
    """

    gt_fractions: np.ndarray
    labeled_images: np.ndarray
    zero_shot_scores: np.ndarray | None = None
    balance: str | None = "eq"
    balance_semi: bool | None = None
    has_bg: bool = True

    kind = "semi"

    def build(self, offsets: np.ndarray, num_classes: int | None = None) -> Supervision:
        return semi_supervision(self.gt_fractions, self.labeled_images, offsets,
                                zero_shot_scores=self.zero_shot_scores, balance=self.balance,
                                balance_semi=self.balance_semi, has_bg=self.has_bg)


@dataclass
class WeakSupervision:
    """Weak (image-level) supervision (see :func:`weak_supervision`).

    Attributes:
        zero_shot_logits: (N, C) float 100·cos logits over the fg names then the dustbin background names.
        image_labels: per image, its fg classes (fg indices 0..K-2) -- the classes of the image's **ground
            truth** (:meth:`tusss.data.datasets.SegDataset.image_classes` with ``fg_index=True``), not the
            classes that some mask happens to cover.
        num_classes: K (background included); None -> the GLCC's class names.
        fg_method / bg_method: the zero-shot scoring (default: docs/reference-code.md §5 WSSS setting).
        variant: "reference" | "paper".
    """

    zero_shot_logits: np.ndarray
    image_labels: Sequence[Sequence[int] | np.ndarray]
    num_classes: int | None = None
    fg_method: FgMethod | None = None
    bg_method: BgMethod | None = None
    variant: str = "reference"

    kind = "weak"

    def build(self, offsets: np.ndarray, num_classes: int | None = None) -> Supervision:
        K = self.num_classes if self.num_classes is not None else num_classes
        if K is None:
            raise InputError("weak supervision needs num_classes (or GLCC class_names)")
        fg = FgMethod.from_dict(self.fg_method) if self.fg_method is not None else None
        bg = BgMethod.from_dict(self.bg_method) if self.bg_method is not None else None
        return weak_supervision(self.zero_shot_logits, self.image_labels, offsets, int(K), fg_method=fg,
                                bg_method=bg, variant=self.variant)


SupervisionSpec = FullSupervision | SemiSupervision | WeakSupervision
_SPECS: dict[str, type] = {"full": FullSupervision, "semi": SemiSupervision, "weak": WeakSupervision}
_ALIASES = {"weak_variant": "variant"}  # the keyword GLCC.fit(**kw) accepted before the typed specs


def make_supervision_spec(kind: str, kw: Mapping[str, Any]) -> SupervisionSpec:
    """``kind`` + keyword arguments -> the typed spec. Unknown or misspelled keywords are refused with an
    :class:`InputError` that names them and lists the keywords this kind takes (no keyword is silently
    ignored); a missing required one is named too."""
    if kind not in _SPECS:
        raise InputError(f"supervision must be one of {sorted(_SPECS)} or a supervision object, got {kind!r}")
    cls = _SPECS[kind]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kw = {_ALIASES.get(k, k): v for k, v in kw.items()}
    unknown = sorted(set(kw) - set(fields))
    if unknown:
        import difflib

        hints = [f"{u!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, fields, 1)) else repr(u)
                 for u in unknown]
        raise InputError(f"{kind} supervision got unknown keyword(s) {', '.join(hints)}; it takes "
                         f"{sorted(fields)}")
    required = [n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    for n in required:
        if kw.get(n) is None:
            raise InputError(f"{kind} supervision needs {n}=")
    return cls(**kw)
