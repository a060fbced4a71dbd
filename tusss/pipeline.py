"""Open-vocabulary segmentation: SAM masks -> DBA-CLIP mask embeddings -> text scores -> label map.

Per image (docs/reference-code.md §4-5):

1. masks: a :class:`~tusss.masks.MaskSet` given by the caller, or ``mask_generator.generate(image)``;
   masks with zero area are dropped (they cannot be embedded).
2. ``e = clip.embed_masks(image, masks)`` (M, D); logits ``100 * cos(e, t)`` against the text embeddings
   ``t = clip.encode_text(names, templates)``.
3. per-mask scores / labels / confidences by :func:`tusss.scoring.seed_on_logits` with the background
   handling of the class set (docs/reference-code.md §5 "concrete settings"):

   * ``explicit`` ('background' is text column 0, e.g. ``voc21``): softmax (gamma 1) over all columns,
     then ``s_bg <- s_bg ** alpha`` (``bg_alpha``, default 1);
   * ``dustbin`` (fg names followed by background names, e.g. ``voc``, ``coco-object``): softmax over all
     names (fg and dustbins compete), keep the fg columns, prepend ``bg = (1 - max_c s_c) ** p``
     (``bg_pow``, default 1);
   * ``none`` (``voc20``, ``coco-stuff``, ``cityscapes``, custom lists without background): softmax over
     the classes.

4. label map: masks painted in ascending (level, conf) order, uncovered pixels = ``fill`` (default 0).

Custom class lists (``classes="cat,dog"`` or a list) get an explicit 'background' class prepended by
default (``background=True``): class 0 = 'background', class i = the i-th given name, scored like ``voc21``,
so uncovered pixels (fill 0) and background masks read as background. Pass ``background=False`` for a
plain softmax over the given names (class i = the i-th name). A list that already starts with
'background' is used as is.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tusss.errors import InputError
from tusss.labels import paint_labels
from tusss.masks.maskset import MaskSet
from tusss.scoring import BgMethod, FgMethod, seed_on_logits
from tusss.validate import check_image

__all__ = ["ClassSet", "OVSegmenter", "Segmentation", "resolve_class_set"]


@dataclass(frozen=True)
class ClassSet:
    """The text columns and output classes used by :class:`OVSegmenter`.

    Attributes:
        names: prompts fed to the text encoder, one text column each.
        class_names: output class names, length K (label ids index this list).
        bg_mode: ``"explicit"`` (column 0 is 'background' = class 0), ``"dustbin"`` (columns past
            ``num_fg`` are background names; class 0 = background derived from the fg scores) or ``"none"``.
        num_fg: number of foreground text columns.
        templates: template set name or list of templates.
        source: vocabulary name, or ``"custom"``.
    """

    names: tuple[str, ...]
    class_names: tuple[str, ...]
    bg_mode: str
    num_fg: int
    templates: Any
    source: str = "custom"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_background(self) -> bool:
        return self.bg_mode != "none"


def _vocab_key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def resolve_class_set(
    vocabulary: str | None = None,
    classes: str | list[str] | tuple[str, ...] | None = None,
    templates: str | list[str] | None = None,
    background: bool = True,
) -> ClassSet:
    """Build the :class:`ClassSet` of a named vocabulary or of a custom class list (module docstring).

    Raises:
        InputError: both or neither of ``vocabulary`` / ``classes``; unknown vocabulary; empty, blank or
            duplicate class names; 'background' anywhere but first.
    """
    if (vocabulary is None) == (classes is None):
        raise InputError("give exactly one of vocabulary (e.g. 'voc21') or classes (e.g. 'cat,dog')")
    if vocabulary is not None:
        from tusss.clip.vocabularies import VOCABULARIES, get_vocabulary

        key = _vocab_key(vocabulary)
        if key not in VOCABULARIES:
            key = vocabulary  # let get_vocabulary raise its own message listing the known names
        v = get_vocabulary(key)
        return ClassSet(tuple(v.names), tuple(v.class_names), v.bg_mode, v.num_fg,
                        templates if templates is not None else v.templates, v.name)  # fmt: skip
    if isinstance(classes, str):
        names = [c.strip() for c in classes.split(",")]
    elif isinstance(classes, (list, tuple)):
        names = [c.strip() if isinstance(c, str) else c for c in classes]
    else:
        raise InputError(f"classes must be a comma-separated string or a list of strings, got {classes!r}")
    if not names or any(not isinstance(n, str) or not n for n in names):
        raise InputError(f"classes must be non-empty names, got {classes!r}")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"classes has duplicate names {dup}")
    low = [n.lower() for n in names]
    if "background" in low[1:]:
        raise InputError("'background' must be the first class of a custom list (it becomes class 0)")
    tmpl = templates if templates is not None else "vild"
    if low[0] == "background":
        if len(names) < 2:
            raise InputError("classes needs at least one foreground name besides 'background'")
        return ClassSet(tuple(names), tuple(names), "explicit", len(names) - 1, tmpl)
    if background:
        full = ("background", *names)
        return ClassSet(full, full, "explicit", len(names), tmpl)
    return ClassSet(tuple(names), tuple(names), "none", len(names), tmpl)


@dataclass
class Segmentation:
    """Result of :meth:`OVSegmenter.segment` for one image.

    Attributes:
        label_map: (H, W) uint8 (int32 when K > 255) class ids; uncovered pixels = ``fill``.
        labels: (M,) int64 class id of each mask.
        scores: (M, K) float32 final per-class scores of each mask (after the background handling).
        conf: (M,) float32 score of the chosen class.
        masks: the :class:`MaskSet` used (zero-area masks removed).
        class_names: the K class names.
        logits: (M, C) float32 text logits (100 * cos) before scoring, C = number of text columns (None from
            :class:`tusss.Predictor`, whose classifier may not be a text one).
        timings: seconds per stage (``masks``, ``embed``, ``classify``, ``paint``, ``total``) and ``batch_size``.
    """

    label_map: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    conf: np.ndarray
    masks: MaskSet
    class_names: tuple[str, ...]
    logits: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (tusss.Predictor fills it)

    def to_json(self, include_scores: bool = True) -> dict[str, Any]:
        """JSON-ready per-mask summary (label, class name, conf, level, area, bbox, optional scores): the one
        per-mask schema, :func:`tusss.labels.masks_json`."""
        from tusss.labels import masks_json

        return masks_json(self.labels, self.conf, self.masks, self.class_names,
                          scores=self.scores if include_scores else None)  # fmt: skip


class OVSegmenter:
    """Open-vocabulary segmenter (module docstring).

    Args:
        mask_generator: a :class:`tusss.masks.MaskGenerator` (or anything with ``generate(image) -> MaskSet``);
            may be None when masks are always passed to :meth:`segment`.
        clip: a :class:`tusss.clip.DBAClip` (``embed_masks``, ``encode_text``, ``logits``).
        vocabulary: named vocabulary (``voc21``, ``voc``, ``voc20``, ``coco-object``, ``coco-stuff``,
            ``cityscapes``); or
        classes: custom class names (``"cat,dog"`` or a list; see ``background``).
        templates: template set name / list; default: the vocabulary's (custom lists: ``"vild"``).
        background: custom lists only: prepend an explicit 'background' class (default True).
        bg_alpha: exponent of the explicit background score (reference VOC21 OV: alpha in {1, .5, .25, ...}).
        bg_pow: exponent p of the derived background ``(1 - max) ** p`` of dustbin vocabularies.
        fill: label of pixels covered by no mask (reference: 0).
        fg_method / bg_method: override the scoring of :func:`tusss.scoring.seed_on_logits` entirely.
    """

    def __init__(
        self,
        mask_generator: Any = None,
        clip: Any = None,
        vocabulary: str | None = None,
        classes: str | list[str] | tuple[str, ...] | None = None,
        templates: str | list[str] | None = None,
        *,
        background: bool = True,
        bg_alpha: float = 1.0,
        bg_pow: float = 1.0,
        fill: int = 0,
        fg_method: FgMethod | dict | None = None,
        bg_method: BgMethod | dict | None = None,
    ) -> None:
        if clip is None:
            raise InputError("OVSegmenter needs a DBAClip (clip=...)")
        self.mask_generator = mask_generator
        self.clip = clip
        self.class_set = resolve_class_set(vocabulary, classes, templates, background)
        for n, v in (("bg_alpha", bg_alpha), ("bg_pow", bg_pow)):
            if not np.isfinite(v) or v <= 0:
                raise InputError(f"{n} must be a finite number > 0, got {v!r}")
        K = self.class_set.num_classes
        if not (0 <= int(fill) < max(K, 256)):
            raise InputError(f"fill must be a class id in [0, {max(K, 256)}), got {fill}")
        self.fill = int(fill)
        self.fg_method = FgMethod.from_dict(fg_method) if fg_method is not None else FgMethod(softmax=1.0)
        mode = self.class_set.bg_mode
        if bg_method is not None:
            self.bg_method = BgMethod.from_dict(bg_method)
        elif mode == "explicit":
            self.bg_method = BgMethod("alpha_bg", alpha=float(bg_alpha))
        elif mode == "dustbin":
            self.bg_method = BgMethod("pow", pow=float(bg_pow))
        else:
            self.bg_method = BgMethod("no_bg")
        self._text: np.ndarray | None = None

    @classmethod
    def from_pretrained(
        cls,
        sam: str = "vit_h",
        sam_checkpoint: str | os.PathLike | None = "official",
        mask_preset: str = "tuss",
        clip_model: str = "ViT-B-16",
        clip_weights: str | os.PathLike | None = "openai",
        clip_preset: str = "reference",
        device: str = "cpu",
        mask_overrides: dict[str, Any] | None = None,
        clip_overrides: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> OVSegmenter:
        """Build SAM + DBA-CLIP by name (``None`` checkpoint/weights = random) and wrap them."""
        from tusss.clip.model import DBAClip
        from tusss.masks.generator import MaskGenerator

        resolve_class_set(kwargs.get("vocabulary"), kwargs.get("classes"), kwargs.get("templates"))  # fail early
        gen = MaskGenerator.from_pretrained(sam, checkpoint=sam_checkpoint, preset=mask_preset, device=device,
                                            **(mask_overrides or {}))  # fmt: skip
        clip = DBAClip.from_pretrained(clip_model, weights=clip_weights, preset=clip_preset, device=device,
                                       **(clip_overrides or {}))  # fmt: skip
        return cls(gen, clip, **kwargs)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.class_set.class_names

    @property
    def num_classes(self) -> int:
        return self.class_set.num_classes

    def text_embeddings(self) -> np.ndarray:
        """(C, D) float32 unit text embeddings of the class set's names (computed once)."""
        if self._text is None:
            self._text = self.clip.encode_text(list(self.class_set.names), self.class_set.templates)
        return self._text

    def score(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-mask (scores (M, K), labels (M,), conf (M,)) from text logits (M, C) (docs/reference-code.md §5)."""
        cs = self.class_set
        explicit = cs.bg_mode == "explicit"
        has_bg = cs.has_background
        n_fg = cs.num_fg
        if not explicit and self.bg_method.method == "alpha_bg":
            raise InputError("bg_method 'alpha_bg' needs an explicit 'background' class")
        r = seed_on_logits(
            logits,
            np.arange(n_fg),
            n_fg + 1 if has_bg else n_fg,
            fg_method=self.fg_method,
            bg_method=self.bg_method if has_bg else BgMethod("no_bg"),
            with_bg_logit=explicit,
        )
        return r.scores, r.labels, r.conf

    def generate_masks(self, image: np.ndarray) -> MaskSet:
        """SAM masks of ``image`` with the wrapped generator."""
        if self.mask_generator is None:
            raise InputError("no mask_generator: pass masks to segment() or build OVSegmenter with a generator")
        return self.mask_generator.generate(image)

    def segment(self, image: np.ndarray, masks: MaskSet | None = None) -> Segmentation:
        """Segment one image.

        Args:
            image: (H, W, 3) uint8 RGB.
            masks: its MaskSet (e.g. from a :class:`tusss.masks.MaskCache`); None = generate with SAM.

        Returns:
            :class:`Segmentation`. An image with no (non-empty) mask gives an all-``fill`` map and a warning.
        """
        image = check_image(image)
        hw = image.shape[:2]
        ms = self.generate_masks(image) if masks is None else masks
        if not isinstance(ms, MaskSet):
            raise InputError(f"masks must be a MaskSet, got {type(ms)}")
        if ms.image_hw != hw:
            raise InputError(f"masks are for a {ms.image_hw} image but the image is {hw}")
        if len(ms) and (ms.area <= 0).any():
            nz = np.asarray(ms.masks.reshape(len(ms), -1).any(1))
            if not nz.all():
                warnings.warn(f"dropping {int((~nz).sum())} empty mask(s) of {len(ms)}", stacklevel=2)
                ms = ms.subset(np.flatnonzero(nz))
        K = self.num_classes
        dtype = np.uint8 if max(K, self.fill + 1) <= 256 else np.int32
        if len(ms) == 0:
            warnings.warn(f"image of size {hw} has no masks: every pixel gets the fill label {self.fill}",
                          stacklevel=2)  # fmt: skip
            return Segmentation(
                label_map=np.full(hw, self.fill, dtype),
                labels=np.zeros(0, np.int64),
                scores=np.zeros((0, K), np.float32),
                conf=np.zeros(0, np.float32),
                masks=ms,
                class_names=self.class_names,
                logits=np.zeros((0, len(self.class_set.names)), np.float32),
            )
        emb = self.clip.embed_masks(image, ms.masks)
        logits = self.clip.logits(emb, self.text_embeddings())
        scores, labels, conf = self.score(logits)
        label_map = paint_labels(ms.masks, labels, ms.level, conf, fill=self.fill, dtype=dtype)
        return Segmentation(label_map, labels, scores, conf, ms, self.class_names, logits)
