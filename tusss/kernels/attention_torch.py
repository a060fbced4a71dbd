"""PyTorch twin of the mask-biased dual-softmax attention (docs/reference-code.md §2, DBA-CLIP's last block).

out = (softmax(s·q qᵀ + Bias) + softmax(s·k kᵀ + Bias)) · v           (mode="sum", the reference default)
Bias_ij = 0 if patch tokens i, j share ≥ 1 mask, else ``bias_value``; the CLS (token 0) query row is always 0;
the CLS column is 0 when ``cls_visible``, else ``bias_value`` (Cityscapes config: patch→CLS = −4). The diagonal
is not forced to 0 unless ``force_diagonal`` (paper's B = m̂m̂ᵀ ∨ I).

The twin materialises the (B, 1, L, L) float bias once (shared by all heads and both softmaxes) and calls
``scaled_dot_product_attention`` twice. It is the CPU kernel of the ``tusss::masked_dual_attention`` op
(tusss/kernels/ops.py), DBAClip's plain PyTorch path (``TUSSS_KERNELS=torch`` or ``reference``) and the
decomposition of the op in the exported graphs; :func:`build_attention_bias` is the one home of the dense bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .bitsets import unpack_bitsets

__all__ = ["build_attention_bias", "dual_attention_torch"]


def build_attention_bias(token_masks: torch.Tensor, *, bias_value: float = -4.0, cls_visible: bool = True,
                         force_diagonal: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Materialised additive DBA bias (docs/reference-code.md §2 ``get_mask2mask_att_bias``); also the bias input of the
    exported ONNX graphs (tusss.export / tusss.engine, via ``tusss.clip.attention``).

    Args:
        token_masks: (B, M, N) bool, membership of each of the N patch tokens in each of M masks.
        bias_value: bias between two patch tokens that share no mask (reference −4).
        cls_visible: patch rows see the CLS column with bias 0 (else ``bias_value``).
        force_diagonal: every patch token sees itself (paper's B = m̂m̂ᵀ ∨ I); reference: False.
        dtype: dtype of the returned bias.
    Returns:
        (B, L, L), L = N + 1 (token 0 = CLS): 0 where patch tokens i, j share ≥ 1 mask, else ``bias_value``;
        row 0 (CLS queries) 0 everywhere; column 0 is 0 if ``cls_visible``.
    """
    b, _, n = token_masks.shape
    tm = token_masks.to(torch.float32)
    shared = torch.bmm(tm.transpose(1, 2), tm) > 0.5  # C = Σ_m m̂m̂ᵀ > 0.5: share >= 1 mask
    # (docs/reference-code.md §2 step 2)
    if force_diagonal:
        shared |= torch.eye(n, dtype=torch.bool, device=shared.device)
    bias = torch.zeros(b, n + 1, n + 1, dtype=dtype, device=token_masks.device)
    bias[:, 1:, 1:].masked_fill_(~shared, bias_value)
    if not cls_visible:
        bias[:, 1:, 0] = bias_value
    return bias


def dual_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bitsets: torch.Tensor | None, *,
                         bias_value: float = -4.0, cls_visible: bool = True, scale: float | None = None,
                         mode: str = "sum", force_diagonal: bool = False,
                         attn_bias: torch.Tensor | None = None) -> torch.Tensor:
    """The one PyTorch implementation of the dual-softmax attention (CPU kernel and fallback of the
    ``tusss::masked_dual_attention`` op, the reference of its Triton kernel, and the decomposition the exported
    ONNX / AOTInductor graphs are made of).

    Args:
        q, k, v: (B, H, L, hd) float.
        bitsets: (B, L-1, W) int32 membership words (bias built here with :func:`build_attention_bias`), or None.
        attn_bias: (B, L, L) float additive bias already materialised (the exported graphs' input); used as is
            when given (``bitsets`` must then be None).
    Returns:
        (B, H, L, hd) in q's dtype.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    bias = None
    if attn_bias is not None:
        bias = attn_bias.to(q.dtype)[:, None]
    elif bitsets is not None:
        bias = build_attention_bias(unpack_bitsets(bitsets), bias_value=bias_value, cls_visible=cls_visible,
                                    force_diagonal=force_diagonal, dtype=q.dtype)[:, None]
    out = F.scaled_dot_product_attention(q, q, v, attn_mask=bias, scale=scale)
    out = out + F.scaled_dot_product_attention(k, k, v, attn_mask=bias, scale=scale)
    if mode == "mean":
        out = out * 0.5
    return out
