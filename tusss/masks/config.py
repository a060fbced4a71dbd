"""`MaskGenConfig`: every knob of the SAM mask stage, with the presets ``"tuss"`` and ``"sam"``.

The ``"tuss"`` preset is the official TUSS pattern ``l2_nmsf_s1_rsw3`` (docs/reference-code.md §1): SAM ViT-H
automatic mask generation with one crop layer, level-dependent threshold/NMS offsets that favour
"whole" (level 2) masks, SAM's small-region clean-up and the rock-sand-water (RSW) filter.
The ``"sam"`` preset is plain ``SamAutomaticMaskGenerator`` with its default arguments.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields
from typing import Any

from tusss.errors import InputError

#: Bumped whenever the meaning of the stored masks changes (part of :meth:`MaskGenConfig.config_hash`).
MASK_FORMAT_VERSION = 1

#: Fields that only trade memory for speed and never change the masks; left out of the config hash so a
#: cache written with ``points_per_batch=256`` can be resumed with ``points_per_batch=64``.
MEMORY_ONLY_FIELDS = ("points_per_batch", "rock_sand_water_chunk_size")


@dataclass(frozen=True)
class MaskGenConfig:
    """Parameters of :class:`tusss.masks.MaskGenerator` (defaults = docs/reference-code.md §1 pattern
    ``l2_nmsf_s1_rsw3``).

    The first eleven fields are ``SamAutomaticMaskGenerator``'s arguments of the same name. The per-level
    tuples are indexed by SAM's multimask output index ("level"): 0 sub-part, 1 part, 2 whole.

    Attributes:
        score_thresh_offset: added to the predicted IoU before the ``> pred_iou_thresh`` test.
        score_nms_offset: added to the predicted IoU to form the per-crop box-NMS score.
        stability_score_bias: added to the stability score before the ``>= stability_score_thresh`` test.
        rock_sand_water_thresh: recall threshold of the RSW filter (:func:`tusss.masks.rock_sand_water`);
            ``None`` disables the filter.
        rock_sand_water_chunk_size: candidate masks per matrix product in the RSW filter (0 = all at once);
            memory only.
    """

    points_per_side: int = 32
    points_per_batch: int = 256
    pred_iou_thresh: float = 0.86
    stability_score_thresh: float = 0.92
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 1
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 2
    min_mask_region_area: int = 100
    score_thresh_offset: tuple[float, float, float] = (0.0, 0.0, 0.1)
    score_nms_offset: tuple[float, float, float] = (0.0, 0.0, 1.0)
    stability_score_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rock_sand_water_thresh: float | None = 0.3
    rock_sand_water_chunk_size: int = 0

    def __post_init__(self) -> None:
        def _int(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InputError(f"MaskGenConfig.{name} must be an int >= {lo}, got {v!r}")

        def _float(name: str, lo: float, hi: float) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= float(v) <= hi):
                raise InputError(f"MaskGenConfig.{name} must be a number in [{lo}, {hi}], got {v!r}")
            object.__setattr__(self, name, float(v))

        _int("points_per_side", 1)
        _int("points_per_batch", 1)
        _int("crop_n_layers", 0)
        _int("crop_n_points_downscale_factor", 1)
        _int("min_mask_region_area", 0)
        _int("rock_sand_water_chunk_size", 0)
        _float("pred_iou_thresh", -math.inf, math.inf)
        _float("stability_score_thresh", -math.inf, math.inf)
        _float("stability_score_offset", 0.0, math.inf)
        _float("box_nms_thresh", 0.0, 1.0)
        _float("crop_nms_thresh", 0.0, 1.0)
        _float("crop_overlap_ratio", 0.0, 1.0)
        for name in ("score_thresh_offset", "score_nms_offset", "stability_score_bias"):
            v = getattr(self, name)
            try:
                t = tuple(float(x) for x in v)
            except TypeError:
                t = ()
            if len(t) != 3 or not all(math.isfinite(x) for x in t):
                raise InputError(f"MaskGenConfig.{name} must be 3 finite numbers (levels 0, 1, 2), got {v!r}")
            object.__setattr__(self, name, t)
        r = self.rock_sand_water_thresh
        if r is not None:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not (0.0 <= float(r) <= 1.0):
                raise InputError(f"MaskGenConfig.rock_sand_water_thresh must be None or in [0, 1], got {r!r}")
            object.__setattr__(self, "rock_sand_water_thresh", float(r))

    def replace(self, **overrides: Any) -> MaskGenConfig:
        """A copy with some fields changed (unknown field -> InputError)."""
        _check_fields(overrides)
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of all fields (tuples as lists)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    def sam_kwargs(self) -> dict[str, Any]:
        """The arguments of ``SamAutomaticMaskGenerator.__init__`` that this config sets."""
        names = (
            "points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
            "stability_score_offset", "box_nms_thresh", "crop_n_layers", "crop_nms_thresh",
            "crop_overlap_ratio", "crop_n_points_downscale_factor", "min_mask_region_area",
        )  # fmt: skip
        return {n: getattr(self, n) for n in names}

    def config_hash(self, model_type: str = "", weights_id: str = "") -> str:
        """Stable sha256 hex digest of the fields that change the masks + model type + weights identity.

        Memory-only fields (:data:`MEMORY_ONLY_FIELDS`) are left out. Floats are serialised with ``repr``
        precision by :func:`json.dumps`, keys sorted, so the hash does not depend on field order or platform.
        """
        d = {k: v for k, v in self.to_dict().items() if k not in MEMORY_ONLY_FIELDS}
        payload = {
            "config": d,
            "model_type": model_type,
            "weights": weights_id,
            "mask_format": MASK_FORMAT_VERSION,
        }
        s = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(s.encode("utf-8")).hexdigest()


#: SamAutomaticMaskGenerator's own defaults: no level offsets, no RSW.
_SAM_DEFAULTS = dict(
    points_per_side=32,
    points_per_batch=64,
    pred_iou_thresh=0.88,
    stability_score_thresh=0.95,
    stability_score_offset=1.0,
    box_nms_thresh=0.7,
    crop_n_layers=0,
    crop_nms_thresh=0.7,
    crop_overlap_ratio=512 / 1500,
    crop_n_points_downscale_factor=1,
    min_mask_region_area=0,
    score_thresh_offset=(0.0, 0.0, 0.0),
    score_nms_offset=(0.0, 0.0, 0.0),
    stability_score_bias=(0.0, 0.0, 0.0),
    rock_sand_water_thresh=None,
    rock_sand_water_chunk_size=0,
)

PRESETS: dict[str, MaskGenConfig] = {
    "tuss": MaskGenConfig(),  # docs/reference-code.md §1, pattern l2_nmsf_s1_rsw3
    "sam": MaskGenConfig(**_SAM_DEFAULTS),
}


def _check_fields(overrides: dict[str, Any]) -> None:
    known = {f.name for f in fields(MaskGenConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise InputError(f"unknown MaskGenConfig field(s) {bad}; known fields: {sorted(known)}")


def preset_config(name: str = "tuss", **overrides: Any) -> MaskGenConfig:
    """The preset ``name`` (``"tuss"`` or ``"sam"``) with ``overrides`` applied.

    Raises:
        InputError: unknown preset or unknown field.
    """
    if name not in PRESETS:
        raise InputError(f"unknown mask preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
