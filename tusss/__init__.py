"""tusss: tuning-free universally-supervised semantic segmentation (SAM masks + DBA-CLIP + GLCC).

Public entry points are imported lazily so that ``import tusss`` stays cheap::

    from tusss import MaskGenerator, DBAClip, MaskSet, GLCC, OVSegmenter
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "MaskSet": "tusss.masks.maskset",
    "MaskGenerator": "tusss.masks.generator",
    "MaskCache": "tusss.masks.cache",
    "DBAClip": "tusss.clip.model",
    "DBAClipConfig": "tusss.clip.config",
    "GLCC": "tusss.glcc.model",
    "OVSegmenter": "tusss.pipeline",
    "Predictor": "tusss.predictor",
    "Segmentation": "tusss.pipeline",
    "TextClassifier": "tusss.classify",
    "GLCCClassifier": "tusss.classify",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tusss' has no attribute {name!r}")
