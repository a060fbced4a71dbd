"""SAM mask generation: `MaskSet`, `MaskGenerator` (multi-level, rock-sand-water filter), mask cache."""

from tusss.masks.maskset import MaskSet, masks_to_xywh

__all__ = ["MaskSet", "masks_to_xywh"]
