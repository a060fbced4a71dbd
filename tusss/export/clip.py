"""Export-friendly views of the DBA-CLIP image path and of the CLIP text encoder.

``ClipWindowsGraph`` (docs/reference-code.md §2): a batch of N same-size crops (windows of 224 x 224, or the global
pass) -> per-token 512-d features.

    inputs  pixels     (N, 3, H, W) float32, CLIP-normalised, H and W multiples of the patch size
            pos_embed  (1 + h*w, width) float32, CLS + grid positional embedding already resized to (h, w)
                       (bicubic, computed once per size by the runtime; the 14 x 14 table for 224 windows)
            bias       (N, 1 + h*w, 1 + h*w) float32, the mask attention bias of the modified last block
                       (0 where two tokens share a mask, ``bias_value`` elsewhere; CLS row/column per preset)
    output  features   (N, h*w, 512) float32: LN_post + proj of the patch tokens (CLS discarded)

The graph is tusss' own eager code traced by ``torch.export``: the trunk, the modified last block and the
readout of :class:`tusss.clip.block.TowerRunner` (blocks 0..L-2 are open_clip's own; the last block's dual
attention is the ``tusss::masked_dual_attention`` op, given the bias input, and decomposes into its PyTorch twin
at export: :func:`tusss.kernels.ops.decompose`), so the exported graphs and DBA-CLIP cannot drift apart.

``ClipTextGraph``: tokens (K, 77) int64 + EOT positions (K,) int64 -> (K, 512) float32 un-normalised text
features, identical to ``model.encode_text(tokens)``; the EOT position is an input (instead of an
argmax over token ids inside the graph) so that the graph stays TensorRT-friendly and exact in fp16.
"""

from __future__ import annotations

import torch
from torch import nn

from tusss.clip.block import TowerRunner
from tusss.clip.config import DBAClipConfig

#: DBAClipConfig fields that the windows graph bakes in (recorded in the engine manifest).
GRAPH_CONFIG_FIELDS = ("attention", "attention_mode", "scale", "residual_weight", "attention_weight", "keep_ffn")


class ClipWindowsGraph(nn.Module):
    """DBA-CLIP image path for a batch of crops; see the module docstring for shapes.

    ``config`` is a :class:`tusss.clip.config.DBAClipConfig` (or any object with the
    :data:`GRAPH_CONFIG_FIELDS`); its bias fields are not needed since the bias is an input.
    """

    def __init__(self, clip_model: nn.Module, config: object | None = None) -> None:
        super().__init__()
        self.visual = clip_model.visual
        base = DBAClipConfig()
        self.opts = {k: getattr(config, k, getattr(base, k)) for k in GRAPH_CONFIG_FIELDS}
        self.runner = TowerRunner(self.visual, base.replace(**self.opts))

    def forward(self, pixels: torch.Tensor, pos_embed: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W), (1 + h*w, width), (N, L, L) float32 -> (N, h*w, D) float32."""
        r = self.runner
        return r.readout(r.last_block(r.trunk(pixels, pos_embed), attn_bias=bias))


class ClipTextGraph(nn.Module):
    """CLIP text tower: (tokens (K, T) int64, eot (K,) int64) -> (K, D) float32, = model.encode_text."""

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        for a in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"):
            if not hasattr(clip_model, a):
                raise TypeError(f"ClipTextGraph needs an open_clip CLIP model with a built-in text tower ({a})")
        self.m = clip_model
        mask = clip_model.attn_mask
        self.register_buffer("attn_mask", mask.detach().clone() if mask is not None else None, persistent=False)

    def forward(self, tokens: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        m = self.m
        x = m.token_embedding(tokens) + m.positional_embedding
        x = m.transformer(x, attn_mask=self.attn_mask)
        x = m.ln_final(x)
        K, _, D = x.shape
        idx = eot.reshape(K, 1, 1).expand(K, 1, D)
        x = torch.gather(x, 1, idx).reshape(K, D)
        tp = m.text_projection
        return tp(x) if isinstance(tp, nn.Linear) else x @ tp
