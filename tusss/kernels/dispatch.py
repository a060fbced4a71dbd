"""Public entry points of the DBA-CLIP kernels: input checks, then the ``tusss::masked_dual_attention`` op
(tusss/kernels/ops.py) or the packed ``paper`` attention; backend selection by ``TUSSS_KERNELS`` (read once per
call, in tusss/kernels/backend.py: triton|torch|auto|reference, default auto).
"""

from __future__ import annotations

import torch

from tusss.errors import InputError

from . import ops, packed, pooling
from .backend import ENV_VAR, kernel_setting, resolve_backend
from .bitsets import mask_bitsets
from .packed import PackedMasks, pack_token_masks

__all__ = ["ENV_VAR", "kernel_setting", "resolve_backend", "masked_dual_attention", "paper_attention",
           "paper_packed_attention",
           "mask_pool_weights", "mask_pool", "gsw_pool_weights", "layout_pool_weights", "gsw_pool",
           "mask_bitsets", "pack_token_masks",
           "PackedMasks"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)

mask_pool_weights = pooling.mask_pool_weights
mask_pool = pooling.mask_pool
gsw_pool_weights = pooling.gsw_pool_weights
layout_pool_weights = pooling.layout_pool_weights
gsw_pool = pooling.gsw_pool


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise InputError(f"{name} must be a (B, heads, L, head_dim) tensor, got {tuple(getattr(t, 'shape', ()))}")
        if t.dtype not in _FLOATS:
            raise InputError(f"{name} must be float32/float16/bfloat16, got {t.dtype}")
    if not (q.shape == k.shape == v.shape) or not (q.dtype == k.dtype == v.dtype):
        raise InputError(f"q, k, v must share shape and dtype, got {tuple(q.shape)} {q.dtype}, "
                         f"{tuple(k.shape)} {k.dtype}, {tuple(v.shape)} {v.dtype}")
    if q.shape[2] < 2:
        raise InputError(f"sequence length L must be >= 2 (CLS + patches), got {q.shape[2]}")


def _check_mode(mode: str) -> None:
    if mode not in ("sum", "mean"):
        raise InputError(f"mode must be 'sum' or 'mean', got {mode!r}")


def masked_dual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, masks: torch.Tensor | None, *,
                          bias_value: float = -4.0, cls_visible: bool = True, scale: float | None = None,
                          mode: str = "sum", force_diagonal: bool = False, backend: str | None = None,
                          attn_bias: torch.Tensor | None = None) -> torch.Tensor:
    """DBA-CLIP last-block attention, (softmax(s·qqᵀ+Bias) + softmax(s·kkᵀ+Bias))·v (docs/reference-code.md §2).

    Checks the inputs and calls the ``tusss::masked_dual_attention`` custom op (tusss/kernels/ops.py): the
    Triton kernel (bias rebuilt from bitsets) when selected, else the PyTorch twin; under ``torch.export`` one
    graph node. DBAClip's last block (tusss/clip/block.py) calls this with bitsets built once per window batch,
    the exported graphs with the materialised bias ``attn_bias``.

    Args:
        q, k, v: (B, heads, L, head_dim) float32/float16/bfloat16; token 0 is CLS.
        masks: (B, M, L-1) bool token masks, or their (B, L-1, ceil(M/32)) int32 bitsets (:func:`mask_bitsets`;
            build them once per forward and reuse them), or None (no bias unless ``attn_bias``).
        bias_value: Bias where two patch tokens share no mask (−4 in the reference).
        cls_visible: patch→CLS bias 0 (True) or ``bias_value`` (False, Cityscapes config). The CLS query row
            is never biased.
        scale: logit scale s (default head_dim ** -0.5).
        mode: "sum" (reference) or "mean" (halved, paper Eq. 9).
        force_diagonal: every token sees itself (paper's B = m̂m̂ᵀ ∨ I); reference False.
        backend: override of ``$TUSSS_KERNELS``.
        attn_bias: (B, L, L) float additive bias, already materialised (:func:`attention_torch.build_attention_bias`;
            the input of the exported graphs); excludes ``masks``; always runs the PyTorch twin.
    Returns:
        (B, heads, L, head_dim), dtype of q.
    """
    _check_qkv(q, k, v)
    _check_mode(mode)
    b, _, L, hd = q.shape
    bits = None
    if attn_bias is not None:
        if masks is not None:
            raise InputError("give token masks / bitsets or a materialised attn_bias, not both")
        if attn_bias.dim() != 3 or attn_bias.shape[0] != b or attn_bias.shape[1] != L or attn_bias.shape[2] != L:
            raise InputError(f"attn_bias must be (B={b}, L={L}, L={L}), got {tuple(attn_bias.shape)}")
        if not attn_bias.is_floating_point():
            raise InputError(f"attn_bias must be a float tensor, got {attn_bias.dtype}")
    elif masks is not None:
        if masks.dtype == torch.bool:
            if masks.dim() != 3 or masks.shape[0] != b or masks.shape[2] != L - 1:
                raise InputError(f"token masks must be (B={b}, M, L-1={L - 1}) bool, got {tuple(masks.shape)}")
            bits = mask_bitsets(masks)
        elif masks.dtype == torch.int32:
            if masks.dim() != 3 or masks.shape[0] != b or masks.shape[1] != L - 1:
                raise InputError(f"bitsets must be (B={b}, L-1={L - 1}, W) int32, got {tuple(masks.shape)}")
            bits = masks
        else:
            raise InputError(f"masks must be bool token masks or int32 bitsets, got {masks.dtype}")
        bits = bits.to(q.device)
    kernel_setting(backend)  # a bad TUSSS_KERNELS is an InputError here, not an error inside the op
    s = float(hd**-0.5 if scale is None else scale)
    return ops.masked_dual_attention_op(q, k, v, bits, attn_bias, float(bias_value), bool(cls_visible), s,
                                        mode == "mean", bool(force_diagonal), backend or "")


def paper_packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed_masks: PackedMasks, *,
                           cls_visible: bool = True, scale: float | None = None, mode: str = "sum",
                           backend: str | None = None) -> torch.Tensor:
    """Packed part of the ``paper`` preset: (T, heads, head_dim) outputs of each mask's tokens (see packed.py)."""
    _check_qkv(q, k, v)
    _check_mode(mode)
    if packed_masks.num_windows != q.shape[0] or packed_masks.seq_len != q.shape[2]:
        raise InputError(f"packed masks were built for B={packed_masks.num_windows}, L={packed_masks.seq_len}; "
                         f"q has B={q.shape[0]}, L={q.shape[2]}")
    if resolve_backend(q, backend) == "triton":
        from . import packed_triton

        return packed_triton.packed_attention_triton(q, k, v, packed_masks, cls_visible=cls_visible, scale=scale,
                                                     mode=mode)
    return packed.packed_attention_torch(q, k, v, packed_masks, cls_visible=cls_visible, scale=scale, mode=mode)


def paper_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, masks: torch.Tensor | PackedMasks, *,
                    cls_visible: bool = True, scale: float | None = None, mode: str = "sum",
                    backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor, PackedMasks]:
    """``paper`` preset attention (Eq. 9, hard per-mask bias B = m̂m̂ᵀ ∨ I) for all masks at once.

    Args:
        q, k, v: (B, heads, L, head_dim); masks: (B, M, L-1) bool token masks or a :class:`PackedMasks`.
    Returns:
        shared (B, heads, L, head_dim): every token's output when outside the mask (and CLS's output);
        packed_out (T, heads, head_dim): the output of token ``packed.token_index[t]`` of window
            ``seg_batch`` for mask ``seg_mask`` of its segment; packed: the :class:`PackedMasks` used.
        :func:`kernels.packed.unpack_paper` turns them into the dense (B, M, heads, L, head_dim) result of the
        M separate passes.
    """
    _check_qkv(q, k, v)
    pm = masks if isinstance(masks, PackedMasks) else pack_token_masks(masks.to(q.device))
    shared = packed.paper_shared_pass(q, k, v, cls_visible=cls_visible, scale=scale, mode=mode)
    out = paper_packed_attention(q, k, v, pm, cls_visible=cls_visible, scale=scale, mode=mode, backend=backend)
    return shared, out, pm
