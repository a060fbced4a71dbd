"""`MaskSet`: the class-agnostic masks of one image, the currency between SAM and DBA-CLIP."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from tusss.errors import InputError


@dataclass
class MaskSet:
    """M binary masks of one H x W image with SAM's per-mask metadata.

    Attributes:
        masks: (M, H, W) bool, at the image's resolution.
        level: (M,) int8, SAM multimask output index: 0 sub-part, 1 part, 2 whole.
        predicted_iou: (M,) float32, SAM's predicted IoU (without level offsets).
        stability: (M,) float32, stability score.
        area: (M,) int64, pixel count of each mask.
        bbox: (M, 4) int32, XYWH box of each mask.
        crop_box: (M, 4) int32, XYWH crop the mask came from.
        point_coords: (M, 2) float32, the prompt point (x, y) in image coordinates.
    """

    masks: np.ndarray
    level: np.ndarray
    predicted_iou: np.ndarray
    stability: np.ndarray
    area: np.ndarray = field(default=None)  # type: ignore[assignment]
    bbox: np.ndarray = field(default=None)  # type: ignore[assignment]
    crop_box: np.ndarray = field(default=None)  # type: ignore[assignment]
    point_coords: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        m = np.asarray(self.masks)
        if m.ndim != 3 or m.dtype != np.bool_:
            raise InputError(f"MaskSet.masks must be a (M, H, W) bool array, got {m.dtype} {m.shape}")
        self.masks = m
        M, H, W = m.shape
        self.level = np.asarray(self.level, dtype=np.int8).reshape(-1)
        self.predicted_iou = np.asarray(self.predicted_iou, dtype=np.float32).reshape(-1)
        self.stability = np.asarray(self.stability, dtype=np.float32).reshape(-1)
        if self.area is None:
            self.area = m.reshape(M, H * W).sum(1).astype(np.int64)
        if self.bbox is None:
            self.bbox = masks_to_xywh(m)
        if self.crop_box is None:
            self.crop_box = np.tile(np.array([0, 0, W, H], np.int32), (M, 1))
        if self.point_coords is None:
            self.point_coords = np.zeros((M, 2), np.float32)
        self.area = np.asarray(self.area, dtype=np.int64).reshape(-1)
        self.bbox = np.asarray(self.bbox, dtype=np.int32).reshape(-1, 4)
        self.crop_box = np.asarray(self.crop_box, dtype=np.int32).reshape(-1, 4)
        self.point_coords = np.asarray(self.point_coords, dtype=np.float32).reshape(-1, 2)
        for f in fields(self):
            if f.name != "masks" and len(getattr(self, f.name)) != M:
                raise InputError(f"MaskSet.{f.name} has {len(getattr(self, f.name))} rows but there are {M} masks")

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) of the image the masks belong to."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def subset(self, idx: np.ndarray | list[int] | slice) -> MaskSet:
        """A new MaskSet with the masks selected by ``idx`` (indices or a bool vector)."""
        return MaskSet(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def to_dict(self) -> dict[str, np.ndarray]:
        """Arrays for storage; masks are bit-packed along W (see :meth:`from_dict`)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "masks"}
        d["masks_packed"] = np.packbits(self.masks, axis=-1)
        d["masks_shape"] = np.array(self.masks.shape, np.int64)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, np.ndarray]) -> MaskSet:
        """Inverse of :meth:`to_dict`."""
        shape = tuple(int(s) for s in d["masks_shape"])
        masks = np.unpackbits(d["masks_packed"], axis=-1, count=shape[2]).astype(bool).reshape(shape)
        kw = {f.name: d[f.name] for f in fields(cls) if f.name != "masks"}
        return cls(masks=masks, **kw)

    @classmethod
    def empty(cls, hw: tuple[int, int]) -> MaskSet:
        """A MaskSet with no masks for an image of size ``hw``."""
        return cls(np.zeros((0, *hw), bool), np.zeros(0), np.zeros(0), np.zeros(0))


def masks_to_xywh(masks: np.ndarray) -> np.ndarray:
    """(M, H, W) bool -> (M, 4) int32 XYWH boxes (zeros for empty masks), as segment_anything's
    ``batched_mask_to_box`` followed by XYXY->XYWH."""
    M = masks.shape[0]
    out = np.zeros((M, 4), np.int32)
    if M == 0:
        return out
    rows = masks.any(2)
    cols = masks.any(1)
    has = rows.any(1)
    H, W = masks.shape[1:]
    y0 = np.where(has, rows.argmax(1), 0)
    y1 = np.where(has, H - 1 - rows[:, ::-1].argmax(1), 0)
    x0 = np.where(has, cols.argmax(1), 0)
    x1 = np.where(has, W - 1 - cols[:, ::-1].argmax(1), 0)
    out[:, 0], out[:, 1], out[:, 2], out[:, 3] = x0, y0, x1 - x0, y1 - y0
    return out
