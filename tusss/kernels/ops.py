"""``tusss::masked_dual_attention``: DBA-CLIP's last-block attention as one ``torch.library`` custom op.

One op serves every path (as segment-anything-fast registers its attention kernel):

* eager PyTorch (``DBAClip`` through :func:`tusss.kernels.masked_dual_attention`): the op's kernel picks the
  Triton kernel (:mod:`tusss.kernels.attention_triton`) when ``TUSSS_KERNELS`` / the tensor's device select it
  (CUDA by default, the CPU interpreter under ``TUSSS_KERNELS=triton``), else the PyTorch twin
  (:func:`tusss.kernels.attention_torch.dual_attention_torch`), which is also the Triton kernel's reference;
* ``torch.export`` (ONNX and AOTInductor engines): the op is traced through its fake (meta) implementation into
  one graph node per last block, then replaced by the same PyTorch twin (:func:`decompose` with
  :data:`EXPORT_DECOMPOSITIONS` before AOTInductor; torch's global decomposition table, which
  ``torch.onnx.export`` applies), which the ONNX exporter and Inductor translate like any other aten code.

Schema (all arguments positional; docs/reference-code.md §2)::

    masked_dual_attention(Tensor q, Tensor k, Tensor v, Tensor? bitsets, Tensor? attn_bias, float bias_value,
                          bool cls_visible, float scale, bool mean, bool force_diagonal, str backend) -> Tensor

q, k, v (B, H, L, hd) float; ``bitsets`` (B, L-1, W) int32 mask-membership words *or* ``attn_bias`` (B, L, L)
a materialised additive bias (the exported graphs' input), or neither (no bias); ``backend`` "" = the
environment. Returns a contiguous (B, H, L, hd) tensor of q's dtype. Inputs are validated by the Python entry
point :func:`tusss.kernels.masked_dual_attention`, not here.
"""

from __future__ import annotations

import torch

from . import attention_torch
from .backend import resolve_backend

__all__ = ["OP_NAME", "masked_dual_attention_op", "EXPORT_DECOMPOSITIONS", "decompose"]

OP_NAME = "tusss::masked_dual_attention"


def _twin(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bitsets: torch.Tensor | None,
          attn_bias: torch.Tensor | None, bias_value: float, cls_visible: bool, scale: float, mean: bool,
          force_diagonal: bool, backend: str) -> torch.Tensor:
    """The PyTorch twin with the op's schema (the op's CPU / fallback kernel and its export decomposition)."""
    return attention_torch.dual_attention_torch(
        q, k, v, bitsets, attn_bias=attn_bias, bias_value=bias_value, cls_visible=cls_visible, scale=scale,
        mode="mean" if mean else "sum", force_diagonal=force_diagonal,
    ).contiguous()


@torch.library.custom_op(OP_NAME, mutates_args=())
def masked_dual_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bitsets: torch.Tensor | None,
                             attn_bias: torch.Tensor | None, bias_value: float, cls_visible: bool, scale: float,
                             mean: bool, force_diagonal: bool, backend: str) -> torch.Tensor:
    """Kernel of the op (every device): Triton from the bitsets when selected, else the PyTorch twin."""
    if bitsets is not None and attn_bias is None and resolve_backend(q, backend or None) == "triton":
        from . import attention_triton

        return attention_triton.dual_attention_triton(
            q, k, v, bitsets, bias_value=bias_value, cls_visible=cls_visible, scale=scale,
            mode="mean" if mean else "sum", force_diagonal=force_diagonal,
        ).contiguous()
    return _twin(q, k, v, bitsets, attn_bias, bias_value, cls_visible, scale, mean, force_diagonal, backend)


@masked_dual_attention_op.register_fake
def _fake(q, k, v, bitsets, attn_bias, bias_value, cls_visible, scale, mean, force_diagonal, backend):
    return q.new_empty(q.shape)


#: ``ExportedProgram.run_decompositions`` table that turns the op into its PyTorch twin (aten ops only).
EXPORT_DECOMPOSITIONS = {torch.ops.tusss.masked_dual_attention.default: _twin}

# torch.onnx.export (dynamo) decomposes every op of torch's global decomposition table that has no ONNX
# translation: registering the twin there is the op's ONNX translation.
torch._decomp.register_decomposition(torch.ops.tusss.masked_dual_attention.default)(_twin)


def decompose(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``ep`` with every ``tusss::masked_dual_attention`` node replaced by the PyTorch twin's aten ops (only
    that op is decomposed; the exporters run their own decompositions afterwards)."""
    return ep.run_decompositions(dict(EXPORT_DECOMPOSITIONS))
