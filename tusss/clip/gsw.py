"""Global-aware sliding window (GSW) geometry and inputs (docs/reference-code.md §3, paper §5.2).

- resize: scale = target / min(H0, W0); side = round(scale * side) rounded UP to a multiple of 16; PIL bicubic.
- windows: size s (clipped to the image), stride s // stride_divisor, starts k * stride with the last window
  shifted to end at the border; all (row, col) start pairs, row-major.
- token membership: windows use the masks resized to the resized image with ``nearest-exact`` then cropped and
  ``nearest``-downsampled to the window's token grid; the global pass uses the original masks
  ``nearest``-downsampled to the resized image's token grid (docs/reference-code.md §2 step 1, §3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tusss.clip.config import DBAClipConfig
from tusss.errors import InputError
from tusss.kernels import window_starts


@dataclass(frozen=True)
class WindowGroup:
    """All windows of one size: ``ys`` x ``xs`` start positions (row-major), each ``size`` = (wh, ww) pixels."""

    size: tuple[int, int]
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.ys) * len(self.xs)

    def boxes(self) -> list[tuple[int, int, int, int]]:
        """(y0, x0, y1, x1) of every window, row-major (index = iy * len(xs) + ix)."""
        wh, ww = self.size
        return [(y, x, y + wh, x + ww) for y in self.ys for x in self.xs]


@dataclass(frozen=True)
class GSWLayout:
    """Passes of one image: optional global pass on the resized image + window groups.

    ``global_weight`` multiplies the global map; each window group's canvas gets ``local_weight``.
    """

    orig_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    global_weight: float
    groups: tuple[WindowGroup, ...]
    patch: int

    @property
    def local_weight(self) -> float:
        return (1.0 - self.global_weight) / len(self.groups) if self.groups else 0.0

    @property
    def has_global(self) -> bool:
        return self.global_weight > 0

    @property
    def n_windows(self) -> int:
        return sum(g.n for g in self.groups)


def resized_size(h: int, w: int, target: int | None, divisor: int = 16) -> tuple[int, int]:
    """Resized (H, W): short side -> ``target``, long side round(scale * side); both rounded up to ``divisor``."""
    scale = 1.0 if target is None else target / min(h, w)

    def side(s: int) -> int:
        r = max(1, round(scale * s))
        return int(math.ceil(r / divisor) * divisor)

    return side(h), side(w)


def make_layout(h: int, w: int, cfg: DBAClipConfig, patch: int = 16) -> GSWLayout:
    """GSW layout of an (h, w) image under ``cfg``."""
    Hr, Wr = resized_size(h, w, cfg.target_size, cfg.size_divisor)
    if Hr % patch or Wr % patch:
        raise InputError(f"resized image {Hr}x{Wr} is not a multiple of the patch size {patch}; "
                         f"use size_divisor={patch}")
    groups: list[WindowGroup] = []
    if cfg.global_weight < 1.0:
        for win, stride in zip(cfg.window_sizes, cfg.window_strides()):
            if win % patch:
                raise InputError(f"window size {win} is not a multiple of the patch size {patch}")
            wh, ww = min(win, Hr), min(win, Wr)
            groups.append(WindowGroup((wh, ww), tuple(window_starts(Hr, wh, stride)),
                                      tuple(window_starts(Wr, ww, stride))))
    return GSWLayout((h, w), (Hr, Wr), float(cfg.global_weight), tuple(groups), patch)


def resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """PIL bicubic resize of an (H, W, 3) uint8 image to ``hw`` (no-op when the size already matches)."""
    if tuple(image.shape[:2]) == tuple(hw):
        return image
    return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.BICUBIC))


def normalize_image(
    image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 CLIP-normalised tensor."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).to(device).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return (x - m) / s


@lru_cache(maxsize=256)
def _nearest_indices_np(in_size: int, out_size: int, mode: str) -> np.ndarray:
    src = torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size, 1)
    idx = F.interpolate(src, size=(out_size, 1), mode=mode)
    return idx.view(-1).round().long().numpy()


def nearest_indices(in_size: int, out_size: int, mode: str = "nearest") -> torch.Tensor:
    """Source index of each output index of PyTorch ``F.interpolate(mode)`` (``nearest``/``nearest-exact``).

    Obtained by interpolating an index ramp, so it is PyTorch's own rule (nearest: floor(i * in / out)).
    """
    return torch.from_numpy(_nearest_indices_np(int(in_size), int(out_size), mode))


def global_token_masks(masks: torch.Tensor, grid: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """(M, H0, W0) bool original masks -> (M, h*w) token membership on the global pass's grid."""
    M, H0, W0 = masks.shape
    ry = nearest_indices(H0, grid[0], mode).to(masks.device)
    rx = nearest_indices(W0, grid[1], mode).to(masks.device)
    return masks[:, ry][:, :, rx].reshape(M, -1)


def window_token_masks(
    masks: torch.Tensor, layout: GSWLayout, group: WindowGroup, cfg: DBAClipConfig
) -> torch.Tensor:
    """(M, H0, W0) bool -> (n_windows, M, gh*gw) token membership of every window of ``group``.

    Composition of: ``mask_resize`` of the masks to the resized image, crop, ``token_downsample`` to the grid.
    """
    M, H0, W0 = masks.shape
    Hr, Wr = layout.resized_hw
    wh, ww = group.size
    gh, gw = wh // layout.patch, ww // layout.patch
    dev = masks.device
    ry_full = nearest_indices(H0, Hr, cfg.mask_resize).to(dev)  # resized row -> original row
    rx_full = nearest_indices(W0, Wr, cfg.mask_resize).to(dev)
    ty = nearest_indices(wh, gh, cfg.token_downsample).to(dev)  # token row -> window row
    tx = nearest_indices(ww, gw, cfg.token_downsample).to(dev)
    rows = ry_full[torch.tensor(group.ys, device=dev)[:, None] + ty[None]]  # (ny, gh) original rows
    cols = rx_full[torch.tensor(group.xs, device=dev)[:, None] + tx[None]]  # (nx, gw)
    sel = masks[:, rows[:, None, :, None], cols[None, :, None, :]]  # (M, ny, nx, gh, gw)
    ny, nx = len(group.ys), len(group.xs)
    return sel.permute(1, 2, 0, 3, 4).reshape(ny * nx, M, gh * gw)


def window_crops(image: torch.Tensor, group: WindowGroup) -> torch.Tensor:
    """(3, Hr, Wr) resized normalised image -> (n_windows, 3, wh, ww) crops, row-major."""
    return torch.stack([image[:, y0:y1, x0:x1] for (y0, x0, y1, x1) in group.boxes()], 0)
