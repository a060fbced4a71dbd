"""MaskGenConfig presets (docs/reference-code.md §1 pattern l2_nmsf_s1_rsw3 and SAM's defaults), overrides, hash."""

from __future__ import annotations

import inspect
import json

import pytest
from segment_anything import SamAutomaticMaskGenerator

from tusss.errors import InputError
from tusss.masks import MaskGenConfig, preset_config
from tusss.masks.config import MEMORY_ONLY_FIELDS


def test_tuss_preset_is_reference_pattern() -> None:
    c = preset_config("tuss")
    expected = dict(  # docs/reference-code.md §1 table
        points_per_side=32,
        points_per_batch=256,
        pred_iou_thresh=0.86,
        stability_score_thresh=0.92,
        stability_score_offset=1.0,
        box_nms_thresh=0.7,
        crop_n_layers=1,
        crop_nms_thresh=0.7,
        crop_overlap_ratio=512 / 1500,
        crop_n_points_downscale_factor=2,
        min_mask_region_area=100,
        score_thresh_offset=(0.0, 0.0, 0.1),
        score_nms_offset=(0.0, 0.0, 1.0),
        stability_score_bias=(0.0, 0.0, 0.0),
        rock_sand_water_thresh=0.3,
        rock_sand_water_chunk_size=0,
    )
    assert {k: getattr(c, k) for k in expected} == expected
    assert c == MaskGenConfig()


def test_sam_preset_is_segment_anything_defaults() -> None:
    c = preset_config("sam")
    sig = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    for k, v in c.sam_kwargs().items():
        assert v == sig[k].default, k
    assert c.score_thresh_offset == c.score_nms_offset == c.stability_score_bias == (0.0, 0.0, 0.0)
    assert c.rock_sand_water_thresh is None


def test_overrides_and_errors() -> None:
    c = preset_config("tuss", points_per_side=16, score_nms_offset=[0, 0, 2])
    assert c.points_per_side == 16 and c.score_nms_offset == (0.0, 0.0, 2.0)
    assert preset_config("tuss").points_per_side == 32  # presets are not mutated
    with pytest.raises(InputError, match="unknown mask preset 'fast'"):
        preset_config("fast")
    with pytest.raises(InputError, match="nms"):
        preset_config("sam", nms=0.5)
    for bad in (
        dict(points_per_side=0),
        dict(points_per_side=2.5),
        dict(box_nms_thresh=1.5),
        dict(score_thresh_offset=(0, 0.1)),
        dict(stability_score_bias=(0, 0, float("nan"))),
        dict(rock_sand_water_thresh=-0.1),
        dict(pred_iou_thresh=float("nan")),
        dict(min_mask_region_area=-1),
    ):
        with pytest.raises(InputError):
            preset_config("tuss", **bad)


def test_config_hash() -> None:
    c = preset_config("tuss")
    h = c.config_hash("vit_h", "official:sam_vit_h_4b8939.pth")
    assert len(h) == 64 and h == preset_config("tuss").config_hash("vit_h", "official:sam_vit_h_4b8939.pth")
    # independent recomputation: sha256 of the sorted JSON of the mask-changing fields + model + weights
    import hashlib

    d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in c.__dict__.items() if k not in MEMORY_ONLY_FIELDS}
    payload = {"config": d, "model_type": "vit_h", "weights": "official:sam_vit_h_4b8939.pth", "mask_format": 1}
    ref = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert h == ref
    others = {
        c.replace(points_per_side=16).config_hash("vit_h", "official:sam_vit_h_4b8939.pth"),
        c.replace(score_nms_offset=(0, 0, 0.5)).config_hash("vit_h", "official:sam_vit_h_4b8939.pth"),
        c.config_hash("vit_b", "official:sam_vit_h_4b8939.pth"),
        c.config_hash("vit_h", "file:x.pth:1:ab"),
    }
    assert h not in others and len(others) == 4
    # memory-only knobs do not change the masks, hence not the hash
    assert (
        c.replace(points_per_batch=8, rock_sand_water_chunk_size=4).config_hash(
            "vit_h", "official:sam_vit_h_4b8939.pth"
        )
        == h
    )
