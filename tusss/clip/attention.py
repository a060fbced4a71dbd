"""Kernel hook 1: the DBA attention of the modified last CLIP block (reference §2, paper Eq. 9-10).

This file is the only place where the dual-softmax attention math lives; fused kernels replace
:func:`dual_softmax_attention` with the same semantics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def build_attention_bias(
    token_masks: torch.Tensor,
    *,
    bias_value: float = -4.0,
    cls_visible: bool = True,
    force_diagonal: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Additive attention bias of reference §2 ``get_mask2mask_att_bias``.

    Args:
        token_masks: (B, M, N) bool, membership of each of the N patch tokens in each of M masks.
        bias_value: bias between two patch tokens that share no mask (reference -4).
        cls_visible: patch rows see the CLS column with bias 0 (else ``bias_value``).
        force_diagonal: every patch token sees itself (paper's B = m m^T v I); reference: False.
        dtype: dtype of the returned bias.

    Returns:
        (B, L, L) tensor, L = N + 1 (token 0 = CLS): Bias[b, i, j] = 0 if patch tokens i, j share >= 1 mask,
        else ``bias_value``; row 0 (CLS queries) is 0 everywhere; column 0 is 0 if ``cls_visible``.
    """
    B, _, N = token_masks.shape
    tm = token_masks.to(dtype)
    # C = sum_m m m^T: number of masks shared by tokens i and j (reference §2 step 2).
    shared = torch.bmm(tm.transpose(1, 2), tm) > 0.5
    if force_diagonal:
        shared |= torch.eye(N, dtype=torch.bool, device=shared.device)
    bias = torch.zeros(B, N + 1, N + 1, dtype=dtype, device=token_masks.device)
    bias[:, 1:, 1:].masked_fill_(~shared, bias_value)
    if not cls_visible:
        bias[:, 1:, 0] = bias_value
    return bias


def dual_softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    token_masks: torch.Tensor | None,
    *,
    bias_value: float = -4.0,
    cls_visible: bool = True,
    scale: float | None = None,
    mode: str = "sum",
    force_diagonal: bool = False,
) -> torch.Tensor:
    """(softmax(s q q^T + Bias) + softmax(s k k^T + Bias)) v, per head (reference §2, "SCLIPLayers csa").

    Args:
        q, k, v: (B, heads, L, hd) float, token 0 = CLS, tokens 1..L-1 = patches (row-major grid).
        token_masks: (B, M, L-1) bool membership of each patch token in each mask, or ``None`` (no bias).
        bias_value, cls_visible, force_diagonal: see :func:`build_attention_bias`.
        scale: logit scale s; ``None`` = hd ** -0.5.
        mode: ``"sum"`` (reference: S_q + S_k) or ``"mean"`` (paper Eq. 9: 1/2 (S_q + S_k)).

    Returns:
        (B, heads, L, hd), same dtype as ``v``. The same bias is used for every head and both softmaxes.
    """
    if mode not in ("sum", "mean"):
        raise ValueError(f"mode must be 'sum' or 'mean', got {mode!r}")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    bias = None
    if token_masks is not None:
        bias = build_attention_bias(
            token_masks, bias_value=bias_value, cls_visible=cls_visible, force_diagonal=force_diagonal,
            dtype=q.dtype,
        )[:, None]
    out = F.scaled_dot_product_attention(q, q, v, attn_mask=bias, scale=scale)
    out = out + F.scaled_dot_product_attention(k, k, v, attn_mask=bias, scale=scale)
    if mode == "mean":
        out = out * 0.5
    return out
