"""Build the PyTorch models an engine is exported from (by name + weights), for the CLI.

``--weights`` grammar: ``SRC`` (both models) | ``sam=SRC,clip=SRC`` | ``SAM_SRC,CLIP_SRC`` where SRC is one
weight source of :func:`tusss.weights.parse_weight_source` (``official``/``openai``: SAM official file / OpenAI
CLIP; ``random``/``none``; or a file path). Random weights are drawn from
``torch.manual_seed(seed)`` (SAM first, then CLIP), so a build and a later ``check`` with the same seed
see the same models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tusss.errors import InputError
from tusss.weights import canonical_weight_source, parse_weight_source


def parse_weights(spec: str) -> tuple[str, str]:
    """``--weights`` value -> (sam source, clip source), each ``"random"``, ``"official"`` or a path."""
    spec = (spec or "random").strip()
    if spec.lower() in ("random", "none", "official", "openai"):
        return canonical_weight_source(spec), canonical_weight_source(spec)
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    kv = dict(p.split("=", 1) for p in parts if "=" in p)
    if kv:
        bad = sorted(set(kv) - {"sam", "clip"})
        if bad or len(kv) != len(parts):
            raise InputError(f"--weights {spec!r}: use sam=SRC,clip=SRC (SRC: random, official or a path)")
        return canonical_weight_source(kv.get("sam", "random")), canonical_weight_source(kv.get("clip", "random"))
    if len(parts) == 2:
        return canonical_weight_source(parts[0]), canonical_weight_source(parts[1])
    raise InputError(f"--weights {spec!r}: expected 'random', 'official', 'sam=SRC,clip=SRC' or 'SAM_PATH,CLIP_PATH'")


@dataclass
class Models:
    """What an engine is built from / checked against."""

    mask_generator: Any = None  # tusss.masks.MaskGenerator
    dbaclip: Any = None  # tusss.clip.DBAClip
    sam_info: dict | None = None
    clip_info: dict | None = None


def load_models(
    sam: str | None = "vit_b",
    clip: str | None = "ViT-B-16",
    weights: str = "random",
    *,
    clip_preset: str = "reference",
    mask_preset: str = "tuss",
    seed: int = 0,
    mask_overrides: dict | None = None,
) -> Models:
    """Instantiate MaskGenerator / DBAClip (either may be skipped with None)."""
    sam_src, clip_src = parse_weights(weights)
    torch.manual_seed(seed)
    out = Models()
    if sam:
        from tusss.masks.generator import MaskGenerator

        ck = parse_weight_source(sam_src)
        out.mask_generator = MaskGenerator.from_pretrained(sam, checkpoint=ck, preset=mask_preset,
                                                           **(mask_overrides or {}))
        out.sam_info = {"model_type": sam, "weights": sam_src, "mask_preset": mask_preset, "seed": seed}
    if clip:
        from tusss.clip.model import DBAClip

        w = parse_weight_source(clip_src, official="openai")
        out.dbaclip = DBAClip.from_pretrained(clip, weights=w, preset=clip_preset)
        out.clip_info = {"model": clip, "weights": clip_src, "preset": clip_preset, "seed": seed}
    return out
