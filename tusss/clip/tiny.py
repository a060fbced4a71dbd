"""Registers tusss' own open_clip model configurations (``tusss/clip/model_configs/*.json``).

``"tusss-tiny"``: a ViT with the CLIP ViT-B/16 layout but tiny sizes (vision width 64, 3 layers, 4 heads,
patch 16, image 224; text width 64, 2 layers; embed_dim 32) for fast tests of the real code paths.
"""

from __future__ import annotations

from pathlib import Path

import open_clip

CONFIG_DIR = Path(__file__).with_name("model_configs")
TINY_MODEL = "tusss-tiny"
_registered = False


def register_model_configs() -> None:
    """Add ``tusss/clip/model_configs`` to open_clip's model registry (idempotent)."""
    global _registered
    if not _registered:
        if TINY_MODEL not in open_clip.list_models():
            open_clip.add_model_config(CONFIG_DIR)
        _registered = True
