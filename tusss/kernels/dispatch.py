"""Backend selection for the DBA-CLIP kernels: ``TUSSS_KERNELS=triton|torch|auto|reference`` (default auto).

auto  = Triton for CUDA tensors (when triton is installed), the PyTorch twin otherwise (CPU).
triton = always Triton; on CPU tensors this needs the interpreter (TRITON_INTERPRET=1 set before the kernel
         modules are imported), else an InputError is raised.
torch = always the PyTorch twin.
reference = the PyTorch twin, and DBAClip runs the per-mask bias (``paper`` preset) as one last-block pass per mask
         instead of the packed ragged attention (the plain materialised-bias path).
The variable is read at every call. Both backends compute the same function (tests check it).
"""

from __future__ import annotations

import os

import torch

from tusss.errors import InputError

from . import attention_torch, packed, pooling
from ._triton_util import HAS_TRITON, interpreting
from .bitsets import mask_bitsets
from .packed import PackedMasks, pack_token_masks

__all__ = ["ENV_VAR", "resolve_backend", "masked_dual_attention", "paper_attention", "paper_packed_attention",
           "mask_pool_weights", "mask_pool", "gsw_pool_weights", "layout_pool_weights", "gsw_pool",
           "mask_bitsets", "pack_token_masks",
           "PackedMasks"]

ENV_VAR = "TUSSS_KERNELS"
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)

mask_pool_weights = pooling.mask_pool_weights
mask_pool = pooling.mask_pool
gsw_pool_weights = pooling.gsw_pool_weights
layout_pool_weights = pooling.layout_pool_weights
gsw_pool = pooling.gsw_pool


def resolve_backend(t: torch.Tensor, backend: str | None = None) -> str:
    """'triton' or 'torch' for tensor ``t``, from ``backend`` or ``$TUSSS_KERNELS`` (auto when unset)."""
    choice = (backend or os.environ.get(ENV_VAR, "auto") or "auto").strip().lower()
    if choice not in ("auto", "triton", "torch", "reference"):
        raise InputError(f"{ENV_VAR} must be one of triton|torch|auto|reference, got {choice!r}")
    if choice in ("torch", "reference"):
        return "torch"
    if choice == "auto":
        return "triton" if (HAS_TRITON and t.is_cuda) else "torch"
    if not HAS_TRITON:
        raise InputError(f"{ENV_VAR}=triton but triton is not installed")
    if not t.is_cuda and not interpreting():
        raise InputError(f"{ENV_VAR}=triton needs CUDA tensors (got device {t.device}) or TRITON_INTERPRET=1 "
                         "set before tusss.kernels is imported")
    return "triton"


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
                          mode: str = "sum", force_diagonal: bool = False, backend: str | None = None
                          ) -> torch.Tensor:
    """DBA-CLIP last-block attention, (softmax(s·qqᵀ+Bias) + softmax(s·kkᵀ+Bias))·v (reference §2).

    DBAClip's last block (tusss/clip/block.py) calls this with bitsets built once per window batch.

    Args:
        q, k, v: (B, heads, L, head_dim) float32/float16/bfloat16; token 0 is CLS.
        masks: (B, M, L-1) bool token masks, or their (B, L-1, ceil(M/32)) int32 bitsets (:func:`mask_bitsets`;
            build them once per forward and reuse them), or None (no bias: plain dual softmax, SDPA).
        bias_value: Bias where two patch tokens share no mask (−4 in the reference).
        cls_visible: patch→CLS bias 0 (True) or ``bias_value`` (False, Cityscapes config). The CLS query row
            is never biased.
        scale: logit scale s (default head_dim ** -0.5).
        mode: "sum" (reference) or "mean" (halved, paper Eq. 9).
        force_diagonal: every token sees itself (paper's B = m̂m̂ᵀ ∨ I); reference False.
        backend: override of ``$TUSSS_KERNELS``.
    Returns:
        (B, heads, L, head_dim), dtype of q.
    """
    _check_qkv(q, k, v)
    _check_mode(mode)
    b, _, L, _ = q.shape
    if masks is None:
        return attention_torch.dual_attention_torch(q, k, v, None, scale=scale, mode=mode)
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
    kw = {"bias_value": bias_value, "cls_visible": cls_visible, "scale": scale, "mode": mode,
          "force_diagonal": force_diagonal}
    if resolve_backend(q, backend) == "triton":
        from . import attention_triton

        return attention_triton.dual_attention_triton(q, k, v, bits, **kw)
    return attention_torch.dual_attention_torch(q, k, v, bits, **kw)


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
