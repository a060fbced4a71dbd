"""Exact 1-D interpolation matrices of ``torch.nn.functional.interpolate`` (bilinear, align_corners=False).

Bilinear resizing of an (h, w) map to (H, W) is separable: out = Ry · x · Rxᵀ with Ry (H×h), Rx (W×w).
Reproduces ATen's index/weight computation, including the antialiased (``antialias=True``) separable
triangle filter (``_upsample_bilinear2d_aa``); the tests check both against ``F.interpolate``.
"""

from __future__ import annotations

import functools

import torch

from tusss.errors import InputError

__all__ = ["bilinear_matrix"]


@functools.lru_cache(maxsize=256)
def _bilinear_matrix_f64(out_size: int, in_size: int, antialias: bool) -> torch.Tensor:
    if out_size <= 0 or in_size <= 0:
        raise InputError(f"interpolation sizes must be positive, got out={out_size}, in={in_size}")
    r = torch.zeros(out_size, in_size, dtype=torch.float64)
    scale = in_size / out_size  # area_pixel_compute_scale (no scale_factor given)
    if not antialias:
        for i in range(out_size):
            src = max(scale * (i + 0.5) - 0.5, 0.0)
            i0 = int(src)
            i1 = i0 + 1 if i0 < in_size - 1 else i0
            lam = src - i0
            r[i, i0] += 1.0 - lam
            r[i, i1] += lam
        return r
    # antialias: ATen _compute_indices_min_size_weights_aa with the bilinear (triangle) filter
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(int(center + support + 0.5), in_size) - xmin
        ws = []
        for j in range(xsize):
            x = abs((j + xmin - center + 0.5) * invscale)
            ws.append(1.0 - x if x < 1.0 else 0.0)
        total = sum(ws)
        for j, w in enumerate(ws):
            r[i, xmin + j] = w / total if total != 0.0 else 0.0
    return r


def bilinear_matrix(out_size: int, in_size: int, *, antialias: bool = False, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """(out_size, in_size) matrix R with ``F.interpolate(x, mode='bilinear', align_corners=False,
    antialias=antialias)`` along one axis equal to R · x along that axis."""
    return _bilinear_matrix_f64(int(out_size), int(in_size), bool(antialias)).to(dtype=dtype, device=device)
