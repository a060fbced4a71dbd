"""PyTorch twin of the mask-biased dual-softmax attention (reference §2, DBA-CLIP's last block).

out = (softmax(s·q qᵀ + Bias) + softmax(s·k kᵀ + Bias)) · v           (mode="sum", the reference default)
Bias_ij = 0 if patch tokens i, j share ≥ 1 mask, else ``bias_value``; the CLS (token 0) query row is always 0;
the CLS column is 0 when ``cls_visible``, else ``bias_value`` (Cityscapes config: patch→CLS = −4). The diagonal
is not forced to 0 unless ``force_diagonal`` (paper's B = m̂m̂ᵀ ∨ I). Same as tusss/clip/attention.py.

The twin materialises the (B, 1, L, L) float bias once (shared by all heads and both softmaxes) and calls
``scaled_dot_product_attention`` twice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .bitsets import unpack_bitsets

__all__ = ["dense_bias_from_bitsets", "dual_attention_torch"]


def dense_bias_from_bitsets(bitsets: torch.Tensor, *, bias_value: float = -4.0, cls_visible: bool = True,
                            force_diagonal: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Materialise the DBA bias. bitsets (B, N, W) int32 -> (B, 1, N+1, N+1) ``dtype``."""
    b, n, _ = bitsets.shape
    tm = unpack_bitsets(bitsets).to(torch.float32)  # (B, 32W, N)
    share = torch.bmm(tm.transpose(1, 2), tm) > 0.5  # (B, N, N): count of shared masks > 0
    vis = torch.zeros(b, n + 1, n + 1, dtype=torch.bool, device=bitsets.device)
    vis[:, 1:, 1:] = share
    vis[:, 0, :] = True
    if cls_visible:
        vis[:, :, 0] = True
    if force_diagonal:
        vis |= torch.eye(n + 1, dtype=torch.bool, device=vis.device)
    bias = torch.where(vis, torch.zeros((), dtype=dtype, device=bitsets.device),
                       torch.full((), bias_value, dtype=dtype, device=bitsets.device))
    return bias.unsqueeze(1)


def dual_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bitsets: torch.Tensor | None, *,
                         bias_value: float = -4.0, cls_visible: bool = True, scale: float | None = None,
                         mode: str = "sum", force_diagonal: bool = False) -> torch.Tensor:
    """q, k, v (B, H, L, hd) float; bitsets (B, L-1, W) int32 or None (no bias) -> (B, H, L, hd) in q's dtype."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    bias = None
    if bitsets is not None:
        bias = dense_bias_from_bitsets(bitsets, bias_value=bias_value, cls_visible=cls_visible,
                                       force_diagonal=force_diagonal, dtype=q.dtype)
    out = F.scaled_dot_product_attention(q, q, v, attn_mask=bias, scale=scale)
    out = out + F.scaled_dot_product_attention(k, k, v, attn_mask=bias, scale=scale)
    if mode == "mean":
        out = out * 0.5
    return out
