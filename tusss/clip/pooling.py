"""Kernel hook 2: mask pooling and GSW fusion (reference §2 "Mask pooling", §3).

Reference semantics (what is computed, for every mask m):

    F_glob  = bilinear(global token map -> resized size)                         (align_corners False)
    F_loc_s = sum_w place_w(bilinear_aa(window map w -> window size)) / count_s   (per window size s)
    F       = g * F_glob + (1 - g) * mean_s F_loc_s                               (g = 0.5)
    e_m     = mean_{p in m} bilinear(F -> original size)[p]                       (hard mask, no L2 norm)

Every step is linear in the token features and every bilinear resize is separable, so this module computes
e_m = sum_passes sum_tokens W_m[token] f[token] with the per-mask token weights
W_m = A_y^T (m / |m|) A_x built from the exact 1-D PyTorch interpolation matrices (window counts are
separable too: count(y, x) = count_y(y) * count_x(x)). No 512-channel full-resolution map is materialised.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from tusss.clip.gsw import GSWLayout, WindowGroup


@lru_cache(maxsize=256)
def _interp_matrix_cpu(in_size: int, out_size: int, antialias: bool) -> torch.Tensor:
    # width 2 -> 2 (identity along x): the antialiased kernel mishandles a width-1 input
    eye = torch.eye(in_size, dtype=torch.float64).view(in_size, 1, in_size, 1).expand(-1, -1, -1, 2).contiguous()
    out = F.interpolate(eye, size=(out_size, 2), mode="bilinear", align_corners=False, antialias=antialias)
    return out[:, 0, :, 0].t().contiguous()  # (out, in): column j = response to an impulse at j


def interp_matrix(
    in_size: int, out_size: int, *, antialias: bool = False, device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(out, in) matrix U of 1-D bilinear resizing (align_corners False) exactly as ``F.interpolate`` does it."""
    return _interp_matrix_cpu(int(in_size), int(out_size), bool(antialias)).to(device=device, dtype=dtype)


_CHUNK_ELEMS = 1 << 25  # float elements of one chunk of masks (128 MB in float32)


def separable_mask_weights(masks: torch.Tensor, Ay: torch.Tensor, Ax: torch.Tensor) -> torch.Tensor:
    """W_m = Ay^T (m / |m|) Ax for every mask.

    Args:
        masks: (M, H0, W0) bool.
        Ay: (H0, a), Ax: (W0, b) float matrices mapping token rows / cols to original pixels.
    Returns:
        (M, a, b) float weights (a mask's weights sum to the weights' row sums of Ay (x) Ax over its pixels / |m|).
    """
    M, H0, W0 = masks.shape
    out = []
    step = max(1, _CHUNK_ELEMS // max(1, H0 * W0))
    for s in range(0, M, step):
        mf = masks[s: s + step].to(Ay.dtype)
        area = mf.sum(dim=(1, 2)).clamp_min(1.0)
        if Ax.shape[1] <= Ay.shape[1]:
            t = torch.matmul(mf, Ax)  # (m, H0, b)
            w = torch.matmul(Ay.t(), t)  # (m, a, b)
        else:
            t = torch.matmul(Ay.t(), mf)  # (m, a, W0)
            w = torch.matmul(t, Ax)
        out.append(w / area[:, None, None])
    return torch.cat(out, 0)


def pool_feature_map(fmap: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Reference ``up_emb_avg`` pooling of one map: bilinear (align_corners False) up-sampling of ``fmap`` to the
    mask size, then the mean over each mask's pixels.

    Args:
        fmap: (h, w, D) float feature map (any resolution).
        masks: (M, H0, W0) bool, every mask non-empty.
    Returns:
        (M, D) float32.
    """
    h, w, D = fmap.shape
    _, H0, W0 = masks.shape
    dev = fmap.device
    Ay = interp_matrix(h, H0, device=dev)
    Ax = interp_matrix(w, W0, device=dev)
    Wm = separable_mask_weights(masks, Ay, Ax)
    return torch.einsum("mhw,hwd->md", Wm, fmap.float())


def _group_matrices(layout: GSWLayout, group: WindowGroup, antialias: bool, dev: torch.device):
    """By (H0, ny*gh), Bx (W0, nx*gw): token -> original pixel maps of one window group, 1/count folded in."""
    Hr, Wr = layout.resized_hw
    H0, W0 = layout.orig_hw
    wh, ww = group.size
    gh, gw = wh // layout.patch, ww // layout.patch

    def side(full: int, orig: int, win: int, grid: int, starts: tuple[int, ...]) -> torch.Tensor:
        U = interp_matrix(grid, win, antialias=antialias, device=dev, dtype=torch.float64)  # (win, grid)
        E = torch.zeros(full, len(starts) * grid, dtype=torch.float64, device=dev)
        count = torch.zeros(full, dtype=torch.float64, device=dev)
        for i, s0 in enumerate(starts):
            E[s0: s0 + win, i * grid: (i + 1) * grid] = U
            count[s0: s0 + win] += 1
        R = interp_matrix(full, orig, device=dev, dtype=torch.float64)  # (orig, full)
        return (R @ (E / count[:, None])).float()

    return side(Hr, H0, wh, gh, group.ys), side(Wr, W0, ww, gw, group.xs)


def gsw_pool(
    masks: torch.Tensor,
    layout: GSWLayout,
    global_feats: torch.Tensor | None,
    window_feats: list[torch.Tensor],
    *,
    window_antialias: bool = True,
) -> torch.Tensor:
    """GSW fusion + ``up_emb_avg`` mask pooling (reference §3), computed through separable token weights.

    Args:
        masks: (M, H0, W0) bool original-resolution masks (non-empty).
        layout: the passes (see :func:`tusss.clip.gsw.make_layout`).
        global_feats: (h, w, D) global-pass token map, or (M, h, w, D) with one map per mask (per-mask bias),
            or None when ``layout.has_global`` is False.
        window_feats: per window group, (n, gh, gw, D) or (n, M, gh, gw, D) token maps (row-major windows).
        window_antialias: antialias flag of the window up-sampling (reference True).
    Returns:
        (M, D) float32 unnormalised mask embeddings.
    """
    M, H0, W0 = masks.shape
    Hr, Wr = layout.resized_hw
    dev = masks.device
    ref = global_feats if global_feats is not None else window_feats[0]
    D = ref.shape[-1]
    emb = torch.zeros(M, D, dtype=torch.float32, device=dev)
    if layout.has_global:
        assert global_feats is not None
        g = global_feats.float()
        h, w = g.shape[-3], g.shape[-2]
        Ay = (interp_matrix(Hr, H0, device=dev, dtype=torch.float64)
              @ interp_matrix(h, Hr, device=dev, dtype=torch.float64)).float()
        Ax = (interp_matrix(Wr, W0, device=dev, dtype=torch.float64)
              @ interp_matrix(w, Wr, device=dev, dtype=torch.float64)).float()
        Wg = separable_mask_weights(masks, Ay, Ax) * layout.global_weight
        eq = "mhw,mhwd->md" if g.dim() == 4 else "mhw,hwd->md"
        emb += torch.einsum(eq, Wg, g)
    for group, feats in zip(layout.groups, window_feats):
        f = feats.float()
        By, Bx = _group_matrices(layout, group, window_antialias, dev)
        Ww = separable_mask_weights(masks, By, Bx) * layout.local_weight  # (M, ny*gh, nx*gw)
        ny, nx = len(group.ys), len(group.xs)
        gh, gw = f.shape[-3], f.shape[-2]
        Ww = Ww.view(M, ny, gh, nx, gw).permute(1, 3, 0, 2, 4).reshape(ny * nx, M, gh, gw)
        eq = "nmyx,nmyxd->md" if f.dim() == 5 else "nmyx,nyxd->md"
        emb += torch.einsum(eq, Ww, f)
    return emb
