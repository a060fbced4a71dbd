"""Adjoint bilinear mask pooling and its GSW composition (docs/reference-code.md §2 "Mask pooling", §3 "GSW").

Pooling the bilinearly upsampled token map over a mask (``up_emb_avg``),
    e_m = (1/|m|) Σ_p m_p [U f]_p,   U = Ry ⊗ Rx (separable bilinear upsampling),
equals pooling the *token* features with weights W_m = Uᵀ m / |m| = Ryᵀ m Rx / |m| (h×w per mask), so
    E = W · f,   W (M × h·w), f (h·w × D)  — one M×L×D matmul, no full-resolution canvas.

GSW is linear as well. With the final bilinear resize (Rfy, Rfx) to the mask resolution, the global pass
upsampling (Rgy, Rgx), the antialiased window upsampling Ra (224×14), window placement and the division by the
per-pixel window count c(y, x) = cy(y)·cx(x) (windows form a grid of y-starts × x-starts, so c is separable):
    F = g · Rgy fg Rgxᵀ + (1-g) · [Σ_k P_k Ra f_k Raᵀ P_kᵀ] ⊘ c,      e_m = ⟨m, Rfy F Rfxᵀ⟩ / |m|
    ⇒ W_global,m = g · Gy m Gxᵀ / |m|,        Gy = (Rfy Rgy)ᵀ                        (h_g × H0)
      W_win(a,b),m = (1-g) · Ay_a m Ax_bᵀ / |m|, Ay_a = Raᵀ (diag(1/cy) Rfyᵀ)[y_a : y_a+224]   (14 × H0)
All row operators are stacked, Y = [g Gy; (1-g) Ay_1; …], X = [Gx; Ax_1; …], and T_m = Y m Xᵀ is computed for
all masks with two sparse (banded) matmuls; the global and window weight blocks are slices of T_m.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from tusss.errors import InputError

from .interp import bilinear_matrix

__all__ = [
    "window_starts", "mask_pool_weights", "mask_pool", "gsw_pool_weights", "layout_pool_weights", "gsw_pool",
    "mask_pool_reference", "gsw_pool_reference",
]


def window_starts(size: int, window: int = 224, stride: int = 56) -> list[int]:
    """Sliding-window starts along one axis (docs/reference-code.md §3): k·stride, the last one shifted to end at the
    border."""
    if size < window:
        raise InputError(f"image side {size} is smaller than the window {window}")
    n = (size - window + stride - 1) // stride + 1
    return [min(i * stride, size - window) for i in range(n)]


def _check_masks(masks: torch.Tensor) -> None:
    if not isinstance(masks, torch.Tensor) or masks.dim() != 3:
        raise InputError(f"masks must be an (M, H, W) tensor, got shape {tuple(getattr(masks, 'shape', ()))}")
    if masks.shape[0] == 0:
        raise InputError("masks is empty (M = 0)")


def _check_area(area: torch.Tensor) -> None:
    if bool((area <= 0.5).any()):
        bad = torch.nonzero(area <= 0.5).flatten()[:5].tolist()
        raise InputError(f"masks {bad} are empty (area 0): their mean is undefined")


def _sandwich(masks: torch.Tensor, Y: torch.Tensor, X: torch.Tensor, dtype: torch.dtype
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """T[m] = Y · masks[m] · Xᵀ for all masks, and the mask areas.

    masks (M, H, W) bool/uint8/float, Y (ny, H), X (nx, W) -> T (M, ny, nx), area (M,).
    A row of ones is appended to Y and X so the areas come out of the same products (T[m, ny, nx] = |m|).
    Y and X are banded (each row touches a few pixels), so on the CPU they are applied as sparse CSR matrices.
    """
    m, h, w = masks.shape
    Y = torch.cat([Y.to(dtype), torch.ones(1, h, dtype=dtype, device=Y.device)], 0)
    X = torch.cat([X.to(dtype), torch.ones(1, w, dtype=dtype, device=X.device)], 0)
    ny, nx = Y.shape[0], X.shape[0]
    mf = masks.permute(1, 0, 2).reshape(h, m * w).to(dtype)  # (H, M·W); permute before widening the dtype
    if masks.device.type == "cpu":
        with warnings.catch_warnings():  # torch calls sparse CSR "beta"; these CSR @ dense products are stable
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            ycsr, xcsr = Y.to_sparse_csr(), X.to_sparse_csr()
        a = torch.sparse.mm(ycsr, mf)  # (ny, M·W)
        a = a.view(ny, m, w).permute(2, 1, 0).reshape(w, m * ny)  # (W, M·ny)
        t = torch.sparse.mm(xcsr, a).view(nx, m, ny).permute(1, 2, 0)  # (M, ny, nx)
    else:
        a = (Y @ mf).view(ny, m, w)  # dense (tensor cores) on GPU
        t = torch.einsum("ymw,xw->myx", a, X)
    area = t[:, -1, -1]
    _check_area(area)
    return t[:, :-1, :-1], area


def mask_pool_weights(masks: torch.Tensor, grid: tuple[int, int], *, dtype: torch.dtype = torch.float32
                      ) -> torch.Tensor:
    """Token weights of ``up_emb_avg`` pooling for one pass.

    Args:
        masks: (M, H, W) bool, full-resolution masks (the resolution the feature map is upsampled to).
        grid: (h, w) token grid of the feature map.
    Returns:
        (M, h·w) ``dtype`` weights W with ``W @ f`` == mean over each mask of the bilinearly upsampled ``f``.
    """
    _check_masks(masks)
    _, h0, w0 = masks.shape
    ry = bilinear_matrix(h0, grid[0], dtype=dtype, device=masks.device)
    rx = bilinear_matrix(w0, grid[1], dtype=dtype, device=masks.device)
    t, area = _sandwich(masks, ry.T, rx.T, dtype)
    return (t / area.view(-1, 1, 1)).reshape(masks.shape[0], -1)


def mask_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Adjoint ``up_emb_avg``: features (h, w, D) token map, masks (M, H, W) bool -> (M, D) (features' dtype)."""
    if features.dim() != 3:
        raise InputError(f"features must be (h, w, D), got {tuple(features.shape)}")
    h, w, d = features.shape
    wts = mask_pool_weights(masks, (h, w), dtype=torch.float32)
    return (wts @ features.reshape(h * w, d).float()).to(features.dtype)


def gsw_pool_weights(masks: torch.Tensor, resized: tuple[int, int], *, window: int = 224, stride: int = 56,
                     patch: int = 16, global_weight: float = 0.5, ys: Sequence[int] | None = None,
                     xs: Sequence[int] | None = None, dtype: torch.dtype = torch.float32,
                     ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Pooling weights of the whole GSW feature (docs/reference-code.md §3) for all masks, one square window size.

    Args:
        masks: (M, H0, W0) bool, original-resolution masks.
        resized: (Hr, Wr) resized image size (multiples of ``patch``) the passes run at.
        window, stride, patch: window side, stride and ViT patch size (window grid = window // patch).
        global_weight: g in F = g·global + (1-g)·local; 0 drops the global pass.
        ys, xs: window starts per axis (default :func:`window_starts`); windows are their Cartesian product,
            ordered y-major (k = a·len(xs) + b).
    Returns:
        (w_global, w_windows): w_global (M, hg·wg) (None if g = 0) with hg, wg = Hr/patch, Wr/patch, and
        w_windows (M, K, (window/patch)²), K = len(ys)·len(xs). Token order is row-major in each pass.
    """
    hr, wr = int(resized[0]), int(resized[1])
    ys = list(window_starts(hr, window, stride) if ys is None else ys)
    xs = list(window_starts(wr, window, stride) if xs is None else xs)
    w_global, w_groups = layout_pool_weights(masks, resized, [((window, window), ys, xs)], patch=patch,
                                             global_weight=global_weight, dtype=dtype)
    return w_global, w_groups[0]


def layout_pool_weights(masks: torch.Tensor, resized: tuple[int, int],
                        groups: Sequence[tuple[tuple[int, int], Sequence[int], Sequence[int]]], *,
                        patch: int = 16, global_weight: float = 0.5, antialias: bool = True,
                        dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """Pooling weights of a general GSW layout: a global pass plus any number of window groups.

    F = g·global + (1-g)/G · Σ_groups canvas_group / count_group (docs/reference-code.md §3; Cityscapes:
    G = 2 window sizes, g = 0), bilinearly resized to the masks' resolution and averaged over each mask.

    Args:
        masks: (M, H0, W0) bool, original-resolution masks (every mask non-empty).
        resized: (Hr, Wr) resized image size (multiples of ``patch``).
        groups: per window size ((wh, ww), ys, xs): window size in pixels (multiples of ``patch``) and the
            window starts per axis; windows are ``ys × xs``, y-major.
        global_weight: g; 0 drops the global pass (then ``groups`` must be non-empty).
        antialias: antialias flag of the bilinear window upsampling (reference True).
    Returns:
        w_global (M, Hr/patch · Wr/patch) or None when g = 0, and per group (M, K, (wh/patch)·(ww/patch)).
    """
    _check_masks(masks)
    nm, h0, w0 = masks.shape
    hr, wr = int(resized[0]), int(resized[1])
    if hr % patch or wr % patch:
        raise InputError(f"resized size {resized} must be a multiple of the patch size {patch}")
    g = float(global_weight)
    if g == 0.0 and not groups:
        raise InputError("a layout needs a global pass (global_weight > 0) or at least one window group")
    lw = (1.0 - g) / len(groups) if groups else 0.0

    def axis_ops(full: int, red: int, win: int, starts: Sequence[int]) -> torch.Tensor:
        if win % patch:
            raise InputError(f"window size {win} must be a multiple of the patch size {patch}")
        ra = bilinear_matrix(win, win // patch, antialias=antialias, dtype=torch.float64)  # (win, win/patch)
        cnt = torch.zeros(red, dtype=torch.float64)
        for s in starts:
            if s < 0 or s + win > red:
                raise InputError(f"window start {s} puts a {win}-window outside the axis of length {red}")
            cnt[s:s + win] += 1
        if bool((cnt == 0).any()):
            raise InputError(f"windows {list(starts)} do not cover the axis of length {red}")
        rft = bilinear_matrix(full, red, dtype=torch.float64).T / cnt.view(-1, 1)  # diag(1/c) Rfᵀ, (Hr, H0)
        return torch.cat([ra.T @ rft[s:s + win] for s in starts], 0)  # (n·win/patch, H0)

    ys_ops, xs_ops = [], []
    if g != 0.0:  # (Rf Rg)ᵀ, (hg, H0)
        ys_ops.append(g * (bilinear_matrix(h0, hr, dtype=torch.float64)
                           @ bilinear_matrix(hr, hr // patch, dtype=torch.float64)).T)
        xs_ops.append((bilinear_matrix(w0, wr, dtype=torch.float64)
                       @ bilinear_matrix(wr, wr // patch, dtype=torch.float64)).T)
    for (wh, ww), gys, gxs in groups:
        ys_ops.append(lw * axis_ops(h0, hr, int(wh), gys))
        xs_ops.append(axis_ops(w0, wr, int(ww), gxs))
    Y = torch.cat(ys_ops, 0).to(device=masks.device)
    X = torch.cat(xs_ops, 0).to(device=masks.device)
    t, area = _sandwich(masks, Y, X, dtype)
    t = t / area.view(-1, 1, 1)  # (M, rows of all passes, cols of all passes); only diagonal blocks are used
    y0 = x0 = 0
    w_global = None
    if g != 0.0:
        hg, wg = hr // patch, wr // patch
        w_global = t[:, :hg, :wg].reshape(nm, hg * wg)
        y0, x0 = hg, wg
    w_groups = []
    for (wh, ww), gys, gxs in groups:
        gh, gw = int(wh) // patch, int(ww) // patch
        ny, nx = len(gys), len(gxs)
        blk = t[:, y0:y0 + ny * gh, x0:x0 + nx * gw].reshape(nm, ny, gh, nx, gw).permute(0, 1, 3, 2, 4)
        w_groups.append(blk.reshape(nm, ny * nx, gh * gw))
        y0, x0 = y0 + ny * gh, x0 + nx * gw
    return w_global, w_groups


def gsw_pool(w_global: torch.Tensor | None, w_windows: torch.Tensor, f_global: torch.Tensor | None,
             f_windows: torch.Tensor) -> torch.Tensor:
    """Finish GSW pooling with one matmul.

    w_global (M, Lg), w_windows (M, K, Lw), f_global (Lg, D) patch-token features of the global pass,
    f_windows (K, Lw, D) of the windows -> (M, D) float32.
    """
    m = w_windows.shape[0]
    w = w_windows.reshape(m, -1)
    f = f_windows.reshape(-1, f_windows.shape[-1]).float()
    if w_global is not None:
        if f_global is None:
            raise InputError("f_global is required when w_global is given")
        w = torch.cat([w_global, w], 1)
        f = torch.cat([f_global.float(), f], 0)
    return w.float() @ f


# ---- full-resolution reference paths (the reference code's computation; used by tests and benchmarks) ----

def mask_pool_reference(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Bilinear-upsample features (h, w, D) to the masks' (H, W) and average over each mask -> (M, D)."""
    up = F.interpolate(features.permute(2, 0, 1)[None].float(), size=tuple(masks.shape[1:]), mode="bilinear",
                       align_corners=False)[0]  # (D, H, W)
    mf = masks.float()
    return torch.einsum("mhw,dhw->md", mf, up) / mf.sum((1, 2)).unsqueeze(1)


def gsw_pool_reference(f_global: torch.Tensor | None, f_windows: torch.Tensor, masks: torch.Tensor,
                       resized: tuple[int, int], *, window: int = 224, stride: int = 56, patch: int = 16,
                       global_weight: float = 0.5, ys: Sequence[int] | None = None,
                       xs: Sequence[int] | None = None) -> torch.Tensor:
    """Reference §3 verbatim: canvas of antialiased window upsamplings / count, 0.5/0.5 fusion with the upsampled
    global map, bilinear resize to the masks' size, masked mean. f_global (hg·wg, D), f_windows (K, 196, D)."""
    hr, wr = resized
    ys = list(window_starts(hr, window, stride) if ys is None else ys)
    xs = list(window_starts(wr, window, stride) if xs is None else xs)
    d = f_windows.shape[-1]
    gw = window // patch
    canvas = torch.zeros(d, hr, wr)
    count = torch.zeros(1, hr, wr)
    k = 0
    for y0 in ys:
        for x0 in xs:
            fw = f_windows[k].float().T.reshape(1, d, gw, gw)
            up = F.interpolate(fw, size=(window, window), mode="bilinear", align_corners=False, antialias=True)[0]
            canvas[:, y0:y0 + window, x0:x0 + window] += up
            count[:, y0:y0 + window, x0:x0 + window] += 1
            k += 1
    fused = (1.0 - global_weight) * (canvas / count)
    if global_weight != 0.0:
        fg = f_global.float().T.reshape(1, d, hr // patch, wr // patch)
        fused = fused + global_weight * F.interpolate(fg, size=(hr, wr), mode="bilinear", align_corners=False)[0]
    return mask_pool_reference(fused.permute(1, 2, 0), masks)
