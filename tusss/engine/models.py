"""Build the PyTorch models an engine is exported from (by name + weights), for the CLI.

``--weights`` grammar: ``random`` | ``official`` | ``sam=SRC,clip=SRC`` | ``SAM_SRC,CLIP_SRC`` where SRC is
``random``, ``official`` (SAM official file / OpenAI CLIP) or a file path. Random weights are drawn from
``torch.manual_seed(seed)`` (SAM first, then CLIP), so a build and a later ``check`` with the same seed
see the same models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tusss.errors import InputError


def parse_weights(spec: str) -> tuple[str, str]:
    """``--weights`` value -> (sam source, clip source)."""
    spec = (spec or "random").strip()
    if spec in ("random", "official"):
        return spec, spec
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    kv = dict(p.split("=", 1) for p in parts if "=" in p)
    if kv:
        bad = sorted(set(kv) - {"sam", "clip"})
        if bad or len(kv) != len(parts):
            raise InputError(f"--weights {spec!r}: use sam=SRC,clip=SRC (SRC: random, official or a path)")
        return kv.get("sam", "random"), kv.get("clip", "random")
    if len(parts) == 2:
        return parts[0], parts[1]
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

        ck = None if sam_src == "random" else sam_src
        out.mask_generator = MaskGenerator.from_pretrained(sam, checkpoint=ck, preset=mask_preset,
                                                           **(mask_overrides or {}))
        out.sam_info = {"model_type": sam, "weights": sam_src, "mask_preset": mask_preset, "seed": seed}
    if clip:
        from tusss.clip.model import DBAClip

        w = None if clip_src == "random" else ("openai" if clip_src == "official" else clip_src)
        out.dbaclip = DBAClip.from_pretrained(clip, weights=w, preset=clip_preset)
        out.clip_info = {"model": clip, "weights": clip_src, "preset": clip_preset, "seed": seed}
    return out
