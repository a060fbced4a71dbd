"""Deterministic stand-ins for SAM's image encoder / prompt encoder / mask decoder (test helpers).

A random-weight SAM gives 0-1 noise masks, so the generator logic is exercised with a fake decoder that
returns, for each point prompt, the 3 multimask outputs of a hand-made scene: the scene is painted into
the image itself (R channel = "whole" object id, G = "part" id, B = "sub-part" id), so the fake
works unchanged on crops and resized inputs. Level L's mask for a point is every (low-res) pixel whose
channel value matches the value under the point (so masks can have holes and islands); logits are
+a inside / -a outside (a per region sets the stability score) and the predicted IoU is a per-region
value plus a small per-point jitter (so NMS scores never tie).

Only SAM's own pre/post-processing (resize, normalisation, padding, mask up-sampling) runs around it.
"""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.modeling import Sam
from torch import nn

# channel per level: 0 sub-part -> B, 1 part -> G, 2 whole -> R
LEVEL_CHANNEL = (2, 1, 0)
TOL = 6.0


def _frac(x: np.ndarray | float) -> np.ndarray:
    return np.mod(np.sin(np.asarray(x, np.float64) * 12.9898 + 4.1414) * 43758.5453, 1.0)


# Hand-set (level, channel value) -> (predicted IoU, logit amplitude) of the regions of make_scene(); other
# values get pseudo-random ones. Amplitude sets the stability score (1.2 -> about 0.89 on a 55 px disc).
TABLE: dict[tuple[int, int], tuple[float, float]] = {
    # background (20 in every channel): never a good mask
    (0, 20): (0.50, 30.0),
    (1, 20): (0.50, 30.0),
    (2, 20): (0.50, 30.0),
    # object 1 (R=100): whole passes only thanks to the level-2 threshold offset (0.80 + 0.1 > 0.86);
    # its big part G=60 has a higher raw IoU and a box IoU > 0.7 with the whole (NMS offset decides)
    (2, 100): (0.80, 30.0),
    (1, 60): (0.95, 30.0),
    (1, 140): (0.90, 30.0),
    (0, 100): (0.91, 30.0),
    (0, 180): (0.92, 30.0),
    (0, 140): (0.89, 30.0),
    # object 2 (R=180): whole unstable (stability ~0.89); parts: inner disc G=220, ring G=100
    (2, 180): (0.93, 1.2),
    (1, 220): (0.95, 30.0),
    (1, 100): (0.90, 30.0),
    (0, 220): (0.94, 30.0),
    (0, 60): (0.87, 30.0),
    (0, 240): (0.92, 30.0),
    # object 3 (R=240)
    (2, 240): (0.97, 30.0),
    (1, 180): (0.88, 30.0),
    (1, 120): (0.91, 30.0),
    (0, 200): (0.87, 30.0),
    (0, 230): (0.90, 30.0),
    # sub-part blob in the background, partly over object 1
    (0, 160): (0.93, 30.0),
}


def region_iou(level: int, value: float) -> float:
    """Predicted IoU of region ``value`` at ``level`` (table, else pseudo-random in [0.78, 0.99))."""
    key = (level, int(round(float(value))))
    if key in TABLE:
        return TABLE[key][0]
    return float(0.78 + 0.21 * _frac(value * 1.37 + level * 11.0))


def region_amp(level: int, value: float) -> float:
    """Logit amplitude of region ``value`` at ``level``: sets the stability score (bigger = more stable)."""
    key = (level, int(round(float(value))))
    if key in TABLE:
        return TABLE[key][1]
    return float((1.2, 3.0, 6.0, 30.0)[int(_frac(value * 0.71 + level * 5.0) * 4) % 4])


IOU_LUT = torch.tensor([[region_iou(lv, v) for v in range(256)] for lv in range(3)], dtype=torch.float32)
AMP_LUT = torch.tensor([[region_amp(lv, v) for v in range(256)] for lv in range(3)], dtype=torch.float32)


class FakeImageEncoder(nn.Module):
    """Returns the (normalised, padded) input image itself as the "embedding"."""

    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class FakePromptEncoder(nn.Module):
    """Passes the point coordinates (input frame) through as the sparse embedding."""

    def forward(self, points: tuple[torch.Tensor, torch.Tensor], boxes: object, masks: object):
        coords, _labels = points
        return coords.float(), torch.zeros(coords.shape[0], 1, 1, 1)

    def get_dense_pe(self) -> torch.Tensor:
        return torch.zeros(1, 1, 1, 1)


class FakeMaskDecoder(nn.Module):
    """Scene-reading decoder: (B, 3, S/4, S/4) logits and (B, 3) predicted IoUs, see module doc."""

    def __init__(self, pixel_mean: torch.Tensor, pixel_std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", pixel_mean.reshape(3, 1, 1).clone(), persistent=False)
        self.register_buffer("std", pixel_std.reshape(3, 1, 1).clone(), persistent=False)
        self.calls = 0

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert multimask_output
        self.calls += 1
        x = image_embeddings[0]  # (3, S, S) normalised; padding is exactly 0
        S = x.shape[-1]
        valid = (x != 0).any(0)
        img = (x * self.std + self.mean).round()
        img = torch.where(valid[None], img, torch.full_like(img, -1000.0))
        low = img[:, 2::4, 2::4]  # (3, S/4, S/4) point samples
        coords = sparse_prompt_embeddings[:, 0, :].double()  # (B, 2) x, y in the S frame
        B = coords.shape[0]
        px = coords[:, 0].floor().long().clamp(0, S - 1)
        py = coords[:, 1].floor().long().clamp(0, S - 1)
        vals = img[:, py, px].T  # (B, 3) channel values under the points
        logits = torch.empty(B, 3, *low.shape[1:])
        ious = torch.empty(B, 3)
        cx = coords[:, 0].numpy()
        cy = coords[:, 1].numpy()
        jitter = torch.tensor(0.004 * _frac(cx * 0.618 + cy * 0.382 + 0.5), dtype=torch.float32)
        for lvl, ch in enumerate(LEVEL_CHANNEL):
            v = vals[:, ch]  # (B,)
            inside = (low[ch][None] - v[:, None, None]).abs() <= TOL
            vi = v.long().clamp(0, 255)
            amp = AMP_LUT[lvl][vi]
            logits[:, lvl] = torch.where(inside, amp[:, None, None], -amp[:, None, None])
            ious[:, lvl] = IOU_LUT[lvl][vi] + jitter
        return logits, ious


def install_fakes(sam: Sam) -> Sam:
    """Replace ``sam``'s encoder / prompt encoder / decoder in place by the scene-reading fakes."""
    sam.image_encoder = FakeImageEncoder(sam.image_encoder.img_size)
    sam.prompt_encoder = FakePromptEncoder()
    sam.mask_decoder = FakeMaskDecoder(sam.pixel_mean, sam.pixel_std)
    return sam


def make_scene(h: int = 192, w: int = 256, variant: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 scene of :data:`TABLE`'s regions: R = whole-object id, G = part id, B = sub-part id.

    Object 1: rectangle (R=100) = big part G=60 + bottom strip G=140, sub-parts B=100 / disc B=180 /
    B=140. Object 2: disc (R=180) = inner disc (G=220, B=220) + ring (G=100, B=60 with a quarter B=240).
    Object 3: small rectangle (240, 180 | 120, 200 | 230) whose whole mask has an 8x8 hole and an 8x8 island.
    A background sub-part blob (B=160) overlaps object 1 a little. ``variant > 0`` adds random blobs.
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (20, 20, 20)

    def paint(sel: np.ndarray, r: int | None = None, g: int | None = None, b: int | None = None) -> None:
        for c, v in enumerate((r, g, b)):
            if v is not None:
                img[..., c][sel] = v

    sy, sx = h / 192.0, w / 256.0
    X, Y = xx / sx, yy / sy  # scene coordinates (256 x 192 design)
    o1 = (X >= 20) & (X < 120) & (Y >= 30) & (Y < 160)
    paint(o1, 100, 60, 100)
    paint(o1 & (Y >= 148), g=140, b=140)
    paint((X - 70) ** 2 + (Y - 70) ** 2 < 18**2, b=180)
    r2 = (X - 190) ** 2 + (Y - 105) ** 2
    paint(r2 < 55**2, 180, 100, 60)
    paint(r2 < 26**2, g=220, b=220)
    paint((r2 < 55**2) & (r2 >= 26**2) & (X > 190) & (Y > 105), b=240)
    paint((X >= 200) & (X < 240) & (Y >= 8) & (Y < 36), 240, 180, 200)
    paint((X >= 220) & (X < 240) & (Y >= 8) & (Y < 36), g=120, b=230)  # object 3's right part
    paint((X >= 214) & (X < 222) & (Y >= 18) & (Y < 26), r=20)  # hole in object 3's whole mask
    paint((X >= 244) & (X < 252) & (Y >= 44) & (Y < 52), r=240)  # island of object 3's whole mask
    blob = ((X - 10) ** 2 + (Y - 175) ** 2 < 14**2) | ((X >= 10) & (X < 24) & (Y >= 150) & (Y < 170))
    paint(blob, b=160)
    if variant:
        rng = np.random.default_rng(variant)
        for _ in range(5):  # extra blobs with pseudo-random IoU / stability
            cx, cy, rad = rng.uniform(0, 256), rng.uniform(0, 192), rng.uniform(8, 30)
            paint((X - cx) ** 2 + (Y - cy) ** 2 < rad**2, *(int(v) for v in rng.choice([40, 80, 120, 200, 250], 3)))
    return img
