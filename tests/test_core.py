"""Core utilities: MaskSet storage, input checks, checkpoint resolution."""

from __future__ import annotations

import numpy as np
import pytest

from tusss.errors import InputError, WeightsNotFoundError
from tusss.masks.maskset import MaskSet, masks_to_xywh
from tusss.validate import check_finite, check_image, check_masks
from tusss.weights import resolve_checkpoint


def _naive_xywh(m: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        return [0, 0, 0, 0]
    return [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]


def test_masks_to_xywh_matches_naive_and_segment_anything():
    import torch
    from segment_anything.utils.amg import batched_mask_to_box, box_xyxy_to_xywh

    rng = np.random.default_rng(0)
    masks = rng.random((6, 17, 23)) > 0.97
    masks[0] = False
    masks[1, 3:9, 4:20] = True
    got = masks_to_xywh(masks)
    assert got.tolist() == [_naive_xywh(m) for m in masks]
    boxes = batched_mask_to_box(torch.from_numpy(masks))
    sam = np.array([box_xyxy_to_xywh(b).tolist() for b in boxes])
    assert (got[1:] == sam[1:]).all()


def test_maskset_roundtrip_and_subset():
    rng = np.random.default_rng(1)
    masks = rng.random((5, 9, 13)) > 0.5
    ms = MaskSet(masks, level=[0, 1, 2, 2, 0], predicted_iou=rng.random(5), stability=rng.random(5))
    assert ms.area.tolist() == masks.reshape(5, -1).sum(1).tolist()
    back = MaskSet.from_dict(ms.to_dict())
    for name in ("masks", "level", "predicted_iou", "stability", "area", "bbox", "crop_box", "point_coords"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ms, name))
    sub = ms.subset(np.array([4, 1]))
    assert len(sub) == 2 and sub.level.tolist() == [0, 1] and (sub.masks[0] == masks[4]).all()
    assert MaskSet.empty((4, 5)).image_hw == (4, 5)


def test_maskset_rejects_inconsistent_rows():
    with pytest.raises(InputError, match="level has 1 rows but there are 2 masks"):
        MaskSet(np.ones((2, 3, 3), bool), level=[0], predicted_iou=[1, 1], stability=[1, 1])
    with pytest.raises(InputError, match="bool"):
        MaskSet(np.ones((2, 3, 3), np.uint8), level=[0, 0], predicted_iou=[1, 1], stability=[1, 1])


def test_check_image_errors():
    assert check_image(np.zeros((4, 5, 3), np.uint8)).shape == (4, 5, 3)
    with pytest.raises(InputError, match="dtype uint8"):
        check_image(np.zeros((4, 5, 3), np.float32))
    with pytest.raises(InputError, match=r"shape \(H, W, 3\)"):
        check_image(np.zeros((4, 5), np.uint8))
    with pytest.raises(InputError, match="numpy array"):
        check_image([[1, 2, 3]])


def test_check_masks_errors():
    hw = (4, 5)
    good = np.zeros((2, 4, 5), bool)
    good[:, 0, 0] = True
    assert check_masks(good, hw) is good
    with pytest.raises(InputError, match="empty list"):
        check_masks(np.zeros((0, 4, 5), bool), hw)
    with pytest.raises(InputError, match=r"size \(4, 6\) but the image is \(4, 5\)"):
        check_masks(np.ones((1, 4, 6), bool), hw)
    bad = good.copy()
    bad[1] = False
    with pytest.raises(InputError, match=r"\[1\] are all-False"):
        check_masks(bad, hw)
    with pytest.raises(InputError, match="dtype bool"):
        check_masks(good.astype(np.uint8), hw)
    with pytest.raises(InputError, match="NaN"):
        check_finite(np.array([1.0, np.nan]), "embeddings")


def test_resolve_checkpoint_cache_explicit_and_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("TUSSS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUSSS_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as e:
        resolve_checkpoint("w.pth", url="https://example.org/w.pth", subdir="sam", what="SAM ViT-B checkpoint")
    msg = str(e.value)
    assert "w.pth" in msg and "https://example.org/w.pth" in msg and str(tmp_path / "home" / "sam" / "w.pth") in msg
    target = tmp_path / "home" / "sam" / "w.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert resolve_checkpoint("w.pth", subdir="sam") == target
    explicit = tmp_path / "mine.pth"
    with pytest.raises(WeightsNotFoundError, match="mine.pth"):
        resolve_checkpoint("w.pth", path=explicit)
    explicit.write_bytes(b"y")
    assert resolve_checkpoint("w.pth", path=explicit) == explicit
