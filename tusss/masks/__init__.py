"""SAM mask generation: `MaskSet`, `MaskGenerator` (multi-level, rock-sand-water filter), mask cache.

Heavy modules (segment_anything, torch) are imported lazily, so ``from tusss.masks import MaskSet`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from tusss.masks.maskset import MaskSet, masks_to_xywh

_LAZY = {
    "MaskGenConfig": "tusss.masks.config",
    "preset_config": "tusss.masks.config",
    "PRESETS": "tusss.masks.config",
    "MaskGenerator": "tusss.masks.generator",
    "LevelMaskGenerator": "tusss.masks.generator",
    "FastLevelMaskGenerator": "tusss.masks.amg_fast",
    "LowPrecisionSamBackend": "tusss.masks.sam_precision",
    "rock_sand_water": "tusss.masks.rsw",
    "MaskCache": "tusss.masks.cache",
    "CacheMismatchError": "tusss.masks.cache",
    "cache_masks": "tusss.masks.cache",
    "build_sam": "tusss.masks.sam_registry",
    "sam_model_registry": "tusss.masks.sam_registry",
    "SAM_MODELS": "tusss.masks.sam_registry",
}

__all__ = ["MaskSet", "masks_to_xywh", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tusss.masks' has no attribute {name!r}")
