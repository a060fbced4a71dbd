"""tusss.kernels: fused DBA-CLIP kernels (Triton) beside their PyTorch twins; selection via ``TUSSS_KERNELS``.

Public API (see dispatch.py): masked_dual_attention, paper_attention, paper_packed_attention, mask_bitsets,
pack_token_masks, PackedMasks, mask_pool_weights, mask_pool, gsw_pool_weights, layout_pool_weights, gsw_pool,
bilinear_matrix, window_starts, unpack_paper, resolve_backend. Triton modules are imported lazily (only when used).
"""

from __future__ import annotations

from .bitsets import mask_bitsets, unpack_bitsets
from .dispatch import (
    ENV_VAR,
    gsw_pool,
    gsw_pool_weights,
    layout_pool_weights,
    mask_pool,
    mask_pool_weights,
    masked_dual_attention,
    paper_attention,
    paper_packed_attention,
    resolve_backend,
)
from .interp import bilinear_matrix
from .packed import PackedMasks, pack_token_masks, unpack_paper
from .pooling import window_starts

__all__ = [
    "ENV_VAR", "PackedMasks", "bilinear_matrix", "gsw_pool", "gsw_pool_weights", "layout_pool_weights", "mask_bitsets",
    "mask_pool", "mask_pool_weights", "masked_dual_attention", "pack_token_masks", "paper_attention",
    "paper_packed_attention",
    "resolve_backend", "unpack_bitsets", "unpack_paper", "window_starts",
]
