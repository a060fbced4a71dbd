"""SAM image encoder in bf16 / fp16 with scaled-dot-product attention and float32 LayerNorm (GPU precision path).

:func:`lowp_image_encoder` returns a copy of segment_anything's ``ImageEncoderViT`` in which

* every attention block runs ``torch.nn.functional.scaled_dot_product_attention`` with SAM's decomposed
  relative-position term passed as a float additive mask (the same function as SAM's explicit
  ``softmax(q k^T * scale + rel_h + rel_w) v``, without materialising the softmax in the model's code);
* linear, convolution and embedding weights are cast to ``dtype``; every ``LayerNorm`` (the blocks) and
  ``LayerNorm2d`` (the neck) keeps float32 weights and normalises in float32 (input upcast, output cast back);
* the input is cast to ``dtype`` and the embedding returned in float32, so the prompt decoder stays float32.

In float32 it computes the original encoder's function (tested on the CPU to float rounding).
:class:`LowPrecisionSamBackend` plugs it into :class:`tusss.masks.MaskGenerator` through the generator's
``SamBackend`` seam (its ``precision`` enters the mask-cache key, so bf16 masks are never served as fp32 ones).
APIs used exist in torch 2.1+ (``scale=`` of SDPA), so the GPU machine's torch 2.11 runs it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, Sam
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn

from tusss.errors import InputError
from tusss.masks.generator import TorchSamBackend

__all__ = ["DTYPES", "Float32LayerNorm", "LowPrecisionSamBackend", "SDPAAttention", "lowp_image_encoder"]

#: precision name -> torch dtype
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class SDPAAttention(Attention):
    """segment_anything's ``Attention`` (same parameters) through ``scaled_dot_product_attention``.

    Input (B, H, W, C) in the module's dtype; the relative-position bias (B, heads, HW, HW) is built in that dtype.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, HW, d)
        bias = None
        if self.use_rel_pos:
            d = q.shape[-1]
            Rh = get_rel_pos(H, H, self.rel_pos_h)  # (H, H, d)
            Rw = get_rel_pos(W, W, self.rel_pos_w)  # (W, W, d)
            r_q = q.reshape(B * self.num_heads, H, W, d)
            rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)
            rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)
            bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(B, self.num_heads, H * W, H * W)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        o = o.view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(o)


class Float32LayerNorm(nn.Module):
    """Runs a ``LayerNorm`` / ``LayerNorm2d`` (float32 weights) on the float32 upcast of its input; returns the
    input's dtype."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.float()).to(x.dtype)


class _LowpEncoder(nn.Module):
    """Casts the (N, 3, S, S) input to ``dtype``; returns the (N, C, S/16, S/16) embedding in float32."""

    def __init__(self, encoder: ImageEncoderViT, dtype: torch.dtype) -> None:
        super().__init__()
        self.encoder = encoder
        self.dtype = dtype
        self.img_size = encoder.img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.to(self.dtype)).float()


def lowp_image_encoder(encoder: ImageEncoderViT, precision: str = "bf16") -> nn.Module:
    """A copy of SAM's image encoder with SDPA attention, weights in ``precision`` and float32 LayerNorm.

    Args:
        encoder: segment_anything ``ImageEncoderViT`` (left unchanged).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Returns:
        Module mapping (N, 3, S, S) float32 pre-processed images to (N, C, S/16, S/16) float32 embeddings.

    Raises:
        InputError: unknown precision or not a segment_anything image encoder.
    """
    if precision not in DTYPES:
        raise InputError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    if not isinstance(encoder, ImageEncoderViT):
        raise InputError(f"encoder must be a segment_anything ImageEncoderViT, got {type(encoder).__name__}")
    dtype = DTYPES[precision]
    enc = copy.deepcopy(encoder).to(dtype)
    for m in enc.modules():
        if type(m) is Attention:
            m.__class__ = SDPAAttention
    _wrap_norms(enc)
    return _LowpEncoder(enc, dtype).eval()


def _wrap_norms(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.LayerNorm, LayerNorm2d)):
            setattr(module, name, Float32LayerNorm(child))
        else:
            _wrap_norms(child)


class LowPrecisionSamBackend(TorchSamBackend):
    """``SamBackend`` whose image encoder is :func:`lowp_image_encoder` (prompt encoder and decoder: SAM's own,
    float32). ``name`` is ``"torch-sdpa"``; ``precision`` the encoder's."""

    name = "torch-sdpa"

    def __init__(self, sam: Sam, precision: str = "bf16") -> None:
        super().__init__(sam)
        self.precision = precision
        self.encoder = lowp_image_encoder(sam.image_encoder, precision)
        self.encode_calls = 0

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.encode_calls += 1
        return self.encoder(images)
