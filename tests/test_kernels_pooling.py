"""Adjoint bilinear mask pooling and GSW weight composition against the full-resolution reference computation
(F.interpolate upsampling, canvas accumulation, masked mean; docs/reference-code.md §2 "Mask pooling" and §3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests._kernels_helpers import (
    one_thread,  # noqa: F401 (autouse fixture: torch on one thread)
    random_pixel_masks,
    rel_err,
)
from tusss.errors import InputError
from tusss.kernels import bilinear_matrix, gsw_pool, gsw_pool_weights, mask_pool, mask_pool_weights, window_starts


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("size_in,size_out", [((14, 14), (224, 224)), ((28, 42), (448, 672)), ((28, 38), (375, 500)),
                                               ((448, 608), (375, 500)), ((40, 13), (13, 40)), ((7, 3), (100, 5))])
def test_interpolation_matrices_match_interpolate(size_in, size_out, antialias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *size_in, generator=gen, dtype=torch.float64)
    ref = F.interpolate(x, size=size_out, mode="bilinear", align_corners=False, antialias=antialias)
    ry = bilinear_matrix(size_out[0], size_in[0], antialias=antialias, dtype=torch.float64)
    rx = bilinear_matrix(size_out[1], size_in[1], antialias=antialias, dtype=torch.float64)
    out = torch.einsum("yh,bchw,xw->bcyx", ry, x, rx)
    assert (out - ref).abs().max() < 1e-12


def test_antialias_matters_for_downsampling():
    # guard against a vacuous test: the antialiased and plain matrices differ when shrinking
    assert (bilinear_matrix(13, 40, antialias=True) - bilinear_matrix(13, 40)).abs().max() > 0.1


def test_window_starts():
    assert window_starts(448, 224, 56) == [0, 56, 112, 168, 224]
    assert window_starts(608, 224, 56) == [0, 56, 112, 168, 224, 280, 336, 384]  # 5 x 8 = 40 windows (§3)
    assert window_starts(224, 224, 56) == [0]
    with pytest.raises(InputError):
        window_starts(100, 224, 56)


@pytest.mark.parametrize("m,grid,size", [(1, (14, 14), (224, 224)), (40, (28, 38), (375, 500)),
                                         (300, (28, 42), (96, 144)), (40, (23, 31), (70, 50))])
def test_mask_pool_matches_upsample_and_average(m, grid, size):
    gen = torch.Generator().manual_seed(m)
    masks = random_pixel_masks(m, *size, gen, tiny=max(1, m // 8) if m > 1 else 0)
    feats = torch.randn(*grid, 16, generator=gen)
    up = F.interpolate(feats.permute(2, 0, 1)[None], size=size, mode="bilinear", align_corners=False)[0]
    mf = masks.double()
    ref = torch.einsum("mhw,dhw->md", mf, up.double()) / mf.sum((1, 2))[:, None]
    out = mask_pool(feats, masks)
    assert out.shape == (m, 16)
    assert rel_err(out, ref) < 1e-4
    w = mask_pool_weights(masks, grid)
    assert w.shape == (m, grid[0] * grid[1])
    assert torch.allclose(w.sum(1), torch.ones(m), atol=1e-5)  # a mean: weights sum to 1


def _gsw_reference(f_global, f_windows, masks, resized, window, stride, patch, g):
    """Reference §3 written out independently: canvas of antialiased window upsamplings / count, fusion with the
    upsampled global map, bilinear resize to the masks' size, masked mean (float64)."""
    hr, wr = resized
    d = f_windows.shape[-1]
    gw = window // patch
    canvas = torch.zeros(d, hr, wr, dtype=torch.float64)
    count = torch.zeros(hr, wr, dtype=torch.float64)
    k = 0
    for y0 in window_starts(hr, window, stride):
        for x0 in window_starts(wr, window, stride):
            fw = f_windows[k].double().T.reshape(1, d, gw, gw)
            canvas[:, y0:y0 + window, x0:x0 + window] += F.interpolate(
                fw, size=(window, window), mode="bilinear", align_corners=False, antialias=True)[0]
            count[y0:y0 + window, x0:x0 + window] += 1
            k += 1
    fused = (1 - g) * canvas / count
    if g:
        fg = f_global.double().T.reshape(1, d, hr // patch, wr // patch)
        fused = fused + g * F.interpolate(fg, size=(hr, wr), mode="bilinear", align_corners=False)[0]
    full = F.interpolate(fused[None], size=tuple(masks.shape[1:]), mode="bilinear", align_corners=False)[0]
    mf = masks.double()
    return torch.einsum("mhw,dhw->md", mf, full) / mf.sum((1, 2))[:, None]


# (M, original size, resized size, window, stride, patch, global weight)
GSW_CASES = [
    (40, (375, 500), (448, 608), 224, 56, 16, 0.5),  # the reference geometry: 5 x 8 = 40 windows
    (1, (100, 150), (96, 144), 64, 16, 16, 0.5),  # upsampled to the original size
    (300, (90, 120), (96, 128), 64, 16, 16, 0.5),  # many masks, downsampled to the original size
    (40, (64, 100), (64, 96), 32, 8, 8, 0.3),  # other fusion weight / window / patch
    (12, (50, 70), (64, 96), 32, 16, 16, 0.0),  # no global pass
]


@pytest.mark.parametrize("case", GSW_CASES)
def test_gsw_weights_match_full_resolution_canvas(case):
    m, size, resized, window, stride, patch, g = case
    gen = torch.Generator().manual_seed(m + window)
    masks = random_pixel_masks(m, *size, gen, tiny=max(1, m // 8) if m > 1 else 0)
    d = 8
    ny, nx = len(window_starts(resized[0], window, stride)), len(window_starts(resized[1], window, stride))
    gw = window // patch
    f_windows = torch.randn(ny * nx, gw * gw, d, generator=gen)
    f_global = torch.randn(resized[0] // patch * resized[1] // patch, d, generator=gen)
    ref = _gsw_reference(f_global, f_windows, masks, resized, window, stride, patch, g)
    wg, ww = gsw_pool_weights(masks, resized, window=window, stride=stride, patch=patch, global_weight=g)
    assert ww.shape == (m, ny * nx, gw * gw)
    assert (wg is None) == (g == 0)
    out = gsw_pool(wg, ww, f_global if g else None, f_windows)
    assert rel_err(out, ref) < 1e-4
    total = ww.sum((1, 2)) + (wg.sum(1) if wg is not None else 0)
    assert torch.allclose(total, torch.ones(m), atol=1e-5)


def test_empty_mask_is_an_input_error():
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[0, :4, :4] = True
    masks[2, 5, 5] = True
    with pytest.raises(InputError, match=r"\[1\]"):
        mask_pool_weights(masks, (2, 2))
    with pytest.raises(InputError):
        mask_pool_weights(masks[:0], (2, 2))
    with pytest.raises(InputError):
        gsw_pool_weights(masks[[0, 2]], (40, 40), window=32, stride=16, patch=16)  # not a multiple of 16
