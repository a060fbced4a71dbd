"""Mask-level scoring ("seeding"): per-mask scores, labels and confidences from logits (docs/reference-code.md §5).

This is the authors' ``seed_on_logits`` (TUSS ``src/libs/seeding/seed_anns/seed_on_logits.py`` with
AlchemyCat's ``cam2score_cuda`` / ``cat_bg_score_cuda`` / ``idx2seed_cuda`` / ``min_max_norm``), without the
pixel painting (that lives in :mod:`tusss.labels`). Per image:

1. candidate columns: ``with_bg_logit`` -> ``{0} ∪ (F + 1)`` (column 0 is background); otherwise ``F``
   (columns past the fg classes are "dustbins", e.g. the 25 background names).
2. fg transform (:class:`FgMethod`): optional L1 normalisation over classes, then optional softmax of
   ``gamma * x`` (``is_score``: entries < 1e-8 set to -inf first). ``bypath_suppress=True`` runs it over
   *all* columns and selects the candidates afterwards; ``False`` selects first.
3. ``norm``: clamp at 0, then per-class min-max across the M masks: ``(x - min) / (max - min + 1e-7)``.
4. background (:class:`BgMethod`): ``pow`` prepends ``(1 - max_c s_c) ** p``; ``alpha_bg`` raises the
   existing bg column to ``alpha``; ``thresh`` prepends a constant; ``no_bg`` adds nothing.
5. label = argmax mapped to dataset ids (with a bg column: index 0 -> 0, index i -> F[i-1] + 1; without:
   index i -> F[i]); conf = max score; the score row is scattered into a K-wide row at those ids.

Only deviation: a softmax over a row that is entirely -inf (``is_score`` with every entry < 1e-8) gives
zeros instead of the reference's NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tusss.errors import InputError
from tusss.validate import check_finite

__all__ = ["FgMethod", "BgMethod", "SeedResult", "seed_on_logits", "seed_table"]

_BG_METHODS = ("pow", "alpha_bg", "no_bg", "thresh")


@dataclass(frozen=True)
class FgMethod:
    """Foreground transform, the reference's ``fg_method`` dict (keys ``softmax``, ``norm``, ``L1``,
    ``bypath_suppress``, ``is_score``).

    Attributes:
        softmax: ``gamma`` of ``softmax(gamma * x)`` over classes, or None for no softmax.
        norm: clamp at 0 then per-class min-max normalisation across the masks of the image.
        L1: L1-normalise over classes before the softmax (``x / max(sum |x|, 1e-12)``).
        bypath_suppress: transform over all columns (absent classes and dustbins compete), then select.
        is_score: inputs are scores in [0, 1]: entries < 1e-8 become -inf before the softmax.
    """

    softmax: float | None = 1.0
    norm: bool = False
    L1: bool = False
    bypath_suppress: bool = True
    is_score: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, object] | FgMethod) -> FgMethod:
        """Build from the reference's dict form, e.g. ``{'softmax': 1., 'norm': True}``."""
        if isinstance(d, FgMethod):
            return d
        if not isinstance(d, Mapping) or "softmax" not in d or "norm" not in d:
            raise InputError(f"fg_method must be a FgMethod or a dict with 'softmax' and 'norm', got {d!r}")
        unknown = set(d) - {"softmax", "norm", "L1", "bypath_suppress", "is_score"}
        if unknown:
            raise InputError(f"fg_method has unknown keys {sorted(unknown)}")
        g = d["softmax"]
        return cls(softmax=None if g is None else float(g), norm=bool(d["norm"]), L1=bool(d.get("L1", False)),
                   bypath_suppress=bool(d.get("bypath_suppress", True)), is_score=bool(d.get("is_score", False)))


@dataclass(frozen=True)
class BgMethod:
    """Background score, the reference's ``bg_method`` dict (``{'method': 'pow', 'pow': p}``,
    ``{'method': 'alpha_bg', 'alpha': a}``, ``{'method': 'thresh', 'thresh': t}``, ``{'method': 'no_bg'}``).
    """

    method: str = "pow"
    pow: float = 1.0
    alpha: float = 1.0
    thresh: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in _BG_METHODS:
            raise InputError(f"bg_method.method must be one of {_BG_METHODS}, got {self.method!r}")

    @property
    def adds_bg(self) -> bool:
        """True when this method prepends a new bg column (``pow``, ``thresh``)."""
        return self.method in ("pow", "thresh")

    @classmethod
    def from_dict(cls, d: Mapping[str, object] | BgMethod) -> BgMethod:
        """Build from the reference's dict form."""
        if isinstance(d, BgMethod):
            return d
        if not isinstance(d, Mapping) or "method" not in d:
            raise InputError(f"bg_method must be a BgMethod or a dict with 'method', got {d!r}")
        m = d["method"]
        need = {"pow": "pow", "alpha_bg": "alpha", "thresh": "thresh", "no_bg": None}.get(m)  # type: ignore[arg-type]
        if m not in _BG_METHODS:
            raise InputError(f"bg_method['method'] must be one of {_BG_METHODS}, got {m!r}")
        if need is not None and need not in d:
            raise InputError(f"bg_method {m!r} needs the key {need!r}")
        kw = {need: float(d[need])} if need else {}  # type: ignore[arg-type]
        return cls(method=str(m), **kw)


@dataclass
class SeedResult:
    """Per-mask outputs of :func:`seed_on_logits`.

    Attributes:
        scores: (M, K) float32, the final score row scattered at the dataset ids of the image's class set
            (zeros elsewhere).
        labels: (M,) int64 dataset class ids.
        conf: (M,) float32, the max score of each mask.
    """

    scores: np.ndarray
    labels: np.ndarray
    conf: np.ndarray


def _softmax(x: np.ndarray, gamma: float) -> np.ndarray:
    z = x * gamma
    with np.errstate(invalid="ignore"):
        m = np.max(z, axis=1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        e = np.exp(z - m)
        s = e.sum(1, keepdims=True)
        out = np.divide(e, s, out=np.zeros_like(e), where=s > 0)  # an all -inf row -> zeros (not NaN)
    return out


def _fg_transform(x: np.ndarray, fg: FgMethod) -> np.ndarray:
    if fg.L1:
        x = x / np.maximum(np.abs(x).sum(1, keepdims=True), 1e-12)  # torch F.normalize(p=1, eps=1e-12)
    if fg.softmax is not None:
        if fg.is_score:
            x = np.where(x < 1e-8, -np.inf, x)
        x = _softmax(x, fg.softmax)
    return x


def _check_classes(fg_cls: object, n: int, what: str) -> np.ndarray:
    f = np.asarray(fg_cls)
    if f.ndim != 1:
        raise InputError(f"fg_cls must be a 1-D array of class indices, got shape {f.shape}")
    if f.size and not np.issubdtype(f.dtype, np.integer):
        raise InputError(f"fg_cls must hold integers, got dtype {f.dtype}")
    f = f.astype(np.int64)
    if f.size and (f.min() < 0 or f.max() >= n):
        raise InputError(f"fg_cls {f.tolist()} out of range [0, {n}) ({what})")
    if np.unique(f).size != f.size:
        raise InputError(f"fg_cls {f.tolist()} has duplicates")
    return f


def seed_on_logits(
    logits: np.ndarray,
    fg_cls: Sequence[int] | np.ndarray,
    num_classes: int,
    *,
    fg_method: FgMethod | Mapping[str, object] = FgMethod(),
    bg_method: BgMethod | Mapping[str, object] | None = None,
    with_bg_logit: bool = False,
) -> SeedResult:
    """Per-mask scores, labels and confidences of one image (docs/reference-code.md §5 ``seed_on_logits``).

    Args:
        logits: (M, C) float logits or scores. With ``with_bg_logit`` column 0 is background and column
            ``c + 1`` is fg class ``c``; otherwise column ``c`` is fg class ``c`` and columns past the fg
            classes are dustbins (they only matter with ``bypath_suppress``).
        fg_cls: (F,) int candidate fg classes of the image (fg indices, i.e. dataset id minus 1 when the
            dataset has a background class; the dataset id itself for datasets without background).
        num_classes: K, width of the output score rows = number of dataset ids (bg included when present).
        fg_method: :class:`FgMethod` or the reference's dict.
        bg_method: :class:`BgMethod` or dict; default ``no_bg`` with a bg logit, ``pow`` 1 without.
        with_bg_logit: column 0 of ``logits`` is the background class (always a candidate).

    Returns:
        :class:`SeedResult` with scores (M, K) float32, labels (M,) int64, conf (M,) float32.
    """
    fg = FgMethod.from_dict(fg_method)
    if bg_method is None:
        bg_method = BgMethod("no_bg") if with_bg_logit else BgMethod("pow", pow=1.0)
    bg = BgMethod.from_dict(bg_method)
    z = np.asarray(logits)
    if z.ndim != 2:
        raise InputError(f"logits must be (M, C), got shape {z.shape}")
    if not np.issubdtype(z.dtype, np.floating):
        raise InputError(f"logits must be floating point, got {z.dtype}")
    check_finite(z, "logits")
    z = z.astype(np.float64)
    M, C = z.shape
    if with_bg_logit and bg.adds_bg:
        raise InputError(f"bg_method {bg.method!r} prepends a bg column but with_bg_logit=True already has one; "
                         "use 'alpha_bg' or 'no_bg'")
    if bg.method == "alpha_bg" and not with_bg_logit:
        raise InputError("bg_method 'alpha_bg' needs a bg column (with_bg_logit=True)")
    has_bg = with_bg_logit or bg.adds_bg
    n_fg = num_classes - 1 if has_bg else num_classes
    if n_fg < 0:
        raise InputError(f"num_classes must be >= 1 when a background class is used, got {num_classes}")
    f = _check_classes(fg_cls, n_fg, f"{n_fg} fg classes for K={num_classes}")
    if with_bg_logit:
        cols = np.concatenate([[0], f + 1])
        if C < n_fg + 1:
            raise InputError(f"logits have {C} columns but bg + {n_fg} fg classes need {n_fg + 1}")
    else:
        cols = f
        if C < n_fg:
            raise InputError(f"logits have {C} columns but there are {n_fg} fg classes")

    if fg.bypath_suppress:
        s = _fg_transform(z, fg)[:, cols]
    else:
        s = _fg_transform(z[:, cols], fg)
    if fg.norm and M:
        s = np.maximum(s, 0.0)  # min_max_norm(thresh=0, eps=1e-7) over the masks
        s = (s - s.min(0, keepdims=True)) / (s.max(0, keepdims=True) - s.min(0, keepdims=True) + 1e-7)

    if bg.method == "pow":
        mx = s.max(1, keepdims=True) if s.shape[1] else np.zeros((M, 1))
        s = np.concatenate([np.power(1.0 - mx, bg.pow), s], axis=1)
    elif bg.method == "thresh":
        s = np.concatenate([np.full((M, 1), bg.thresh), s], axis=1)
    elif bg.method == "alpha_bg":
        s = s.copy()
        s[:, 0] = s[:, 0] ** bg.alpha

    ids = np.concatenate([[0], f + 1]) if has_bg else f  # idx2seed
    out = np.zeros((M, num_classes), np.float32)
    if s.shape[1] == 0 or M == 0:
        # no candidate at all (no bg, empty class set): nothing can be labelled
        if M and s.shape[1] == 0:
            raise InputError("empty class set without a background class: no label can be assigned")
        return SeedResult(out, np.zeros(M, np.int64), np.zeros(M, np.float32))
    idx = np.argmax(s, axis=1)
    out[:, ids] = s.astype(np.float32)
    return SeedResult(out, ids[idx].astype(np.int64), s[np.arange(M), idx].astype(np.float32))


def seed_table(
    logits: np.ndarray,
    offsets: np.ndarray,
    class_sets: Sequence[Sequence[int] | np.ndarray] | None,
    num_classes: int,
    **kwargs: object,
) -> SeedResult:
    """:func:`seed_on_logits` applied image by image over a stacked table.

    Args:
        logits: (N, C) float, masks of all images stacked in image order.
        offsets: (I + 1,) int64, rows ``offsets[i]:offsets[i+1]`` belong to image i.
        class_sets: I candidate fg class sets (train mode), or None for all fg classes (val mode).
        num_classes: K.
        **kwargs: ``fg_method``, ``bg_method``, ``with_bg_logit`` as in :func:`seed_on_logits`.

    Returns:
        :class:`SeedResult` with (N, K) scores, (N,) labels, (N,) conf.
    """
    z = np.asarray(logits)
    off = np.asarray(offsets, dtype=np.int64)
    if z.ndim != 2:
        raise InputError(f"logits must be (N, C), got shape {z.shape}")
    if off.ndim != 1 or off.size < 1 or off[0] != 0 or off[-1] != z.shape[0] or np.any(np.diff(off) < 0):
        raise InputError(f"offsets must be non-decreasing from 0 to N={z.shape[0]}")
    n_img = off.size - 1
    if class_sets is not None and len(class_sets) != n_img:
        raise InputError(f"class_sets has {len(class_sets)} entries but offsets describe {n_img} images")
    bgm = BgMethod.from_dict(kwargs["bg_method"]) if kwargs.get("bg_method") is not None else None
    with_bg = bool(kwargs.get("with_bg_logit", False))
    # default bg method: no_bg with a bg logit (the logit is the bg), pow without -> a bg column either way
    has_bg = with_bg or bgm is None or bgm.adds_bg
    all_fg = np.arange(num_classes - 1 if has_bg else num_classes)
    N = z.shape[0]
    scores = np.zeros((N, num_classes), np.float32)
    labels = np.zeros(N, np.int64)
    conf = np.zeros(N, np.float32)
    for i in range(n_img):
        a, b = int(off[i]), int(off[i + 1])
        if a == b:
            continue
        r = seed_on_logits(z[a:b], all_fg if class_sets is None else class_sets[i], num_classes, **kwargs)
        scores[a:b], labels[a:b], conf[a:b] = r.scores, r.labels, r.conf
    return SeedResult(scores, labels, conf)
