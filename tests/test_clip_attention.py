"""DBA-CLIP's hooks against the naive oracle's pieces: the last-block attention (tusss.kernels' PyTorch twin, as
DBAClip calls it) with the loop-built bias, the bias by hand, token masks, and the GSW pooling of
tusss/clip/pooling.py (dense up-sampling), incl. the per-mask (packed) features of the ``paper`` preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from naive_dbaclip import bilinear_matrix, naive_bias, upsample

from tests._kernels_helpers import one_thread  # noqa: F401 (autouse fixture: torch on one thread)
from tusss.clip import DBAClipConfig
from tusss.clip.attention import build_attention_bias
from tusss.clip.block import PerMaskFeatures
from tusss.clip.gsw import global_token_masks, make_layout, nearest_indices, window_token_masks
from tusss.clip.pooling import gsw_pool
from tusss.kernels import bilinear_matrix as kernel_bilinear_matrix
from tusss.kernels import mask_pool, masked_dual_attention, pack_token_masks


def _explicit(q, k, v, tm, cfg_like, mode):
    """Per batch, per head: (softmax(s qq^T + B) + softmax(s kk^T + B)) v with the naive loop-built bias."""
    B, H, L, hd = q.shape
    out = torch.zeros(B, H, L, hd, dtype=torch.float64)
    s = hd ** -0.5
    for b in range(B):
        bias = naive_bias(None if tm is None else tm[b], L, cfg_like)
        for h in range(H):
            qq, kk, vv = q[b, h].double(), k[b, h].double(), v[b, h].double()
            A = torch.softmax(s * qq @ qq.T + bias, -1) + torch.softmax(s * kk @ kk.T + bias, -1)
            out[b, h] = (A / 2 if mode == "mean" else A) @ vv
    return out


@pytest.mark.parametrize("cls_visible", [True, False])
@pytest.mark.parametrize("force_diagonal", [False, True])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_dual_attention_matches_formula(cls_visible, force_diagonal, mode):
    g = torch.Generator().manual_seed(0)
    B, H, n, hd, M = 2, 3, 5, 8, 4
    L = n * n + 1
    q, k, v = (torch.randn(B, H, L, hd, generator=g) * 2 for _ in range(3))
    tm = torch.rand(B, M, L - 1, generator=g) < 0.3
    tm[:, :, :3] = False  # tokens covered by no mask
    cfg = DBAClipConfig.preset(
        "reference", bias_value=-4.0, cls_visible=cls_visible, force_diagonal=force_diagonal
    )
    got = masked_dual_attention(q, k, v, tm, bias_value=-4.0, cls_visible=cls_visible, scale=hd ** -0.5,
                                mode=mode, force_diagonal=force_diagonal, backend="torch")
    ref = _explicit(q, k, v, tm, cfg, mode)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    # no bias
    got0 = masked_dual_attention(q, k, v, None, scale=None, mode=mode)
    torch.testing.assert_close(got0.double(), _explicit(q, k, v, None, cfg, mode), rtol=1e-5, atol=1e-5)


def test_bias_by_hand():
    tm = torch.tensor([[[1, 1, 0, 0], [0, 1, 1, 0]]], dtype=torch.bool)  # token 3 in no mask
    b = build_attention_bias(tm, bias_value=-4.0, cls_visible=True)[0]
    exp = torch.tensor([
        [0, 0, 0, 0, 0],
        [0, 0, 0, -4, -4],
        [0, 0, 0, 0, -4],
        [0, -4, 0, 0, -4],
        [0, -4, -4, -4, -4],  # diagonal not forced
    ], dtype=torch.float32)
    torch.testing.assert_close(b, exp)
    b2 = build_attention_bias(tm, bias_value=-4.0, cls_visible=False, force_diagonal=True)[0]
    exp[1:, 0] = -4
    exp[4, 4] = 0
    torch.testing.assert_close(b2, exp)


@pytest.mark.parametrize("n_in,n_out", [(375, 448), (500, 608), (224, 14), (17, 5), (5, 17)])
def test_nearest_indices_are_pytorchs(n_in, n_out):
    x = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in, 1).expand(1, 1, n_in, 3)
    for mode in ("nearest", "nearest-exact"):
        ref = F.interpolate(x, size=(n_out, 3), mode=mode)[0, 0, :, 0].long()
        assert torch.equal(nearest_indices(n_in, n_out, mode), ref)
    # PyTorch nearest = floor(i * in / out) (docs/reference-code.md §2 step 1)
    exp = np.floor(np.arange(n_out) * (n_in / n_out)).astype(int)
    assert np.abs(nearest_indices(n_in, n_out).numpy() - exp).max() <= 1


@pytest.mark.parametrize("n_in,n_out", [(14, 224), (28, 448), (448, 375), (19, 304)])
def test_interpolation_matrix_matches_formula(n_in, n_out):
    """tusss.kernels' bilinear matrix (the one used by the pooling) == the textbook formula of the naive oracle."""
    U = kernel_bilinear_matrix(n_out, n_in, dtype=torch.float64)
    np.testing.assert_allclose(U.numpy(), bilinear_matrix(n_in, n_out), atol=1e-12)


def _blobs(M, H, W, seed):
    rng = np.random.default_rng(seed)
    m = rng.random((M, H // 4 + 1, W // 4 + 1)) < 0.3
    m = np.kron(m, np.ones((4, 4), bool))[:, :H, :W]
    m[:, 0, 0] = True
    return m


def test_gsw_pool_matches_dense_fusion():
    """Separable-weight pooling == dense canvas fusion + bilinear up-sampling + masked mean (docs/reference-code.md
    §3)."""
    H0, W0, D = 75, 101, 6
    cfg = DBAClipConfig.preset("reference", target_size=112, window_sizes=(64, 32))
    lay = make_layout(H0, W0, cfg)
    Hr, Wr = lay.resized_hw
    g = torch.Generator().manual_seed(0)
    gfeat = torch.randn(Hr // 16, Wr // 16, D, generator=g)
    wfeats = [torch.randn(grp.n, grp.size[0] // 16, grp.size[1] // 16, D, generator=g) for grp in lay.groups]
    masks = _blobs(4, H0, W0, 0)
    got = gsw_pool(torch.from_numpy(masks), lay, gfeat, wfeats)
    fused = cfg.global_weight * upsample(gfeat.permute(2, 0, 1), (Hr, Wr))
    for grp, wf in zip(lay.groups, wfeats):
        canvas = torch.zeros(D, Hr, Wr, dtype=torch.float64)
        count = torch.zeros(Hr, Wr, dtype=torch.float64)
        for i, (y0, x0, y1, x1) in enumerate(grp.boxes()):
            canvas[:, y0:y1, x0:x1] += upsample(wf[i].permute(2, 0, 1), (y1 - y0, x1 - x0))
            count[y0:y1, x0:x1] += 1
        fused += (1 - cfg.global_weight) / len(lay.groups) * canvas / count
    full = upsample(fused, (H0, W0))
    ref = torch.stack([full[:, torch.from_numpy(m)].mean(1) for m in masks])
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    # single map pooling
    ref1 = torch.stack([upsample(gfeat.permute(2, 0, 1), (H0, W0))[:, torch.from_numpy(m)].mean(1) for m in masks])
    torch.testing.assert_close(mask_pool(gfeat, torch.from_numpy(masks)).double(), ref1, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("global_weight", [0.5, 0.0])
def test_gsw_pool_per_mask_features_packed_equals_dense(global_weight):
    """PerMaskFeatures (shared map + packed rows of the tokens inside each mask) pool exactly like the dense
    (n, M, h, w, D) per-mask maps they stand for."""
    H0, W0, D = 75, 101, 6
    cfg = DBAClipConfig.preset("paper", target_size=112, window_sizes=(64,), global_weight=global_weight)
    lay = make_layout(H0, W0, cfg)
    masks = torch.from_numpy(_blobs(4, H0, W0, 2))
    g = torch.Generator().manual_seed(1)

    def both(token_masks, h, w):
        n, M, _ = token_masks.shape
        shared = torch.randn(n, h * w, D, generator=g)
        pm = pack_token_masks(token_masks)
        packed = torch.randn(pm.total, D, generator=g)
        offs = pm.seg_offsets.long()
        rows_b = torch.repeat_interleave(pm.seg_batch.long(), offs[1:] - offs[:-1])
        feats = PerMaskFeatures(shared, packed, pm, rows_b, pm.token_index.long() - 1)
        dense = shared[:, None].expand(n, M, h * w, D).clone()
        dense[rows_b, feats.row_mask(), feats.row_token] = packed
        return feats, dense.reshape(n, M, h, w, D)

    Hr, Wr = lay.resized_hw
    gp, gd = None, None
    if lay.has_global:
        gp, gd = both(global_token_masks(masks, (Hr // 16, Wr // 16))[None], Hr // 16, Wr // 16)
        gd = gd[0]
    grp = lay.groups[0]
    wp, wd = both(window_token_masks(masks, lay, grp, cfg), 4, 4)
    assert wp.packing.total > 0
    got = gsw_pool(masks, lay, gp, [wp])
    ref = gsw_pool(masks, lay, gd, [wd])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_token_masks_match_interpolate():
    H0, W0 = 75, 101
    cfg = DBAClipConfig.preset("reference", target_size=112, window_sizes=(64,))
    lay = make_layout(H0, W0, cfg)
    masks = _blobs(3, H0, W0, 1)
    mt = torch.from_numpy(masks)
    mf = mt.float()[:, None]
    Hr, Wr = lay.resized_hw
    ref_g = F.interpolate(mf, size=(Hr // 16, Wr // 16), mode="nearest")[:, 0] > 0.5
    assert torch.equal(global_token_masks(mt, (Hr // 16, Wr // 16)), ref_g.reshape(3, -1))
    grp = lay.groups[0]
    mr = F.interpolate(mf, size=(Hr, Wr), mode="nearest-exact")
    got = window_token_masks(mt, lay, grp, cfg)
    for i, (y0, x0, y1, x1) in enumerate(grp.boxes()):
        ref = F.interpolate(mr[:, :, y0:y1, x0:x1], size=(4, 4), mode="nearest")[:, 0] > 0.5
        assert torch.equal(got[i], ref.reshape(3, -1))
