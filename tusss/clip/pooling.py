"""Mask pooling with GSW fusion (docs/reference-code.md §2 "Mask pooling", §3) on top of tusss.kernels' adjoint
pooling weights.

Reference semantics (what is computed, for every mask m):

    F_glob  = bilinear(global token map -> resized size)                         (align_corners False)
    F_loc_s = sum_w place_w(bilinear_aa(window map w -> window size)) / count_s   (per window size s)
    F       = g * F_glob + (1 - g) * mean_s F_loc_s                               (g = 0.5)
    e_m     = mean_{p in m} bilinear(F -> original size)[p]                       (hard mask, no L2 norm)

Every step is linear in the token features, so e_m = sum over passes and tokens of W_m[token] f[token]; the
weights come from :func:`tusss.kernels.layout_pool_weights` (exact separable interpolation matrices, no
full-resolution canvas). This module only maps a :class:`~tusss.clip.gsw.GSWLayout` and the pass features of
:meth:`tusss.clip.DBAClip.pass_features` onto them.
"""

from __future__ import annotations

import torch

from tusss.clip.block import PerMaskFeatures
from tusss.clip.gsw import GSWLayout
from tusss.kernels import layout_pool_weights

PassFeatures = torch.Tensor | PerMaskFeatures


def _pool_pass(w: torch.Tensor, feats: PassFeatures) -> torch.Tensor:
    """Pooled contribution of one batch of passes.

    w: (M, P, N) token weights of the P passes (N tokens each); feats: (P, h, w, D) shared token maps,
    (P, M, h, w, D) one map per mask, or :class:`PerMaskFeatures` -> (M, D) float32.
    """
    M, P, N = w.shape
    if isinstance(feats, PerMaskFeatures):
        f = feats.shared.reshape(P * N, -1).float()
        emb = w.reshape(M, P * N) @ f
        # tokens inside their mask: replace the shared feature by the packed one (exact, sparse correction)
        rm = feats.row_mask()
        coef = w[rm, feats.row_pass, feats.row_token]  # (T,)
        delta = feats.packed.float() - f[feats.row_pass * N + feats.row_token]
        return emb.index_add_(0, rm, coef[:, None] * delta)
    f = feats.float()
    if f.dim() == 5:  # (P, M, h, w, D): per-mask maps (reference backend of the per-mask bias)
        return torch.einsum("mpn,pmnd->md", w, f.reshape(P, M, N, -1))
    return w.reshape(M, P * N) @ f.reshape(P * N, -1)


def gsw_pool(
    masks: torch.Tensor,
    layout: GSWLayout,
    global_feats: PassFeatures | None,
    window_feats: list[PassFeatures],
    *,
    window_antialias: bool = True,
) -> torch.Tensor:
    """GSW fusion + ``up_emb_avg`` mask pooling (docs/reference-code.md §3) through the adjoint pooling weights.

    Args:
        masks: (M, H0, W0) bool original-resolution masks (non-empty).
        layout: the passes (see :func:`tusss.clip.gsw.make_layout`).
        global_feats: global pass, (h, w, D) token map, (M, h, w, D) one map per mask, or
            :class:`PerMaskFeatures` (batch of 1); None when ``layout.has_global`` is False.
        window_feats: per window group, the features of its windows ((n, gh, gw, D), (n, M, gh, gw, D) or
            :class:`PerMaskFeatures`; row-major windows).
        window_antialias: antialias flag of the window up-sampling (reference True).
    Returns:
        (M, D) float32 unnormalised mask embeddings.
    """
    groups = [(g.size, g.ys, g.xs) for g in layout.groups]
    w_glob, w_groups = layout_pool_weights(masks, layout.resized_hw, groups, patch=layout.patch,
                                           global_weight=layout.global_weight, antialias=window_antialias)
    parts = []
    if w_glob is not None:
        assert global_feats is not None, "the layout has a global pass"
        g = global_feats if isinstance(global_feats, PerMaskFeatures) else global_feats[None]
        parts.append(_pool_pass(w_glob[:, None], g))
    parts += [_pool_pass(w, f) for w, f in zip(w_groups, window_feats)]
    return torch.stack(parts).sum(0)
