"""Export-friendly views of the DBA-CLIP image path and of the CLIP text encoder.

``ClipWindowsGraph`` (reference §2): a batch of N same-size crops (windows of 224 x 224, or the global
pass) -> per-token 512-d features.

    inputs  pixels     (N, 3, H, W) float32, CLIP-normalised, H and W multiples of the patch size
            pos_embed  (1 + h*w, width) float32, CLS + grid positional embedding already resized to (h, w)
                       (bicubic, computed once per size by the runtime; the 14 x 14 table for 224 windows)
            bias       (N, 1 + h*w, 1 + h*w) float32, the mask attention bias of the modified last block
                       (0 where two tokens share a mask, ``bias_value`` elsewhere; CLS row/column per preset)
    output  features   (N, h*w, 512) float32: LN_post + proj of the patch tokens (CLS discarded)

Blocks 0..L-2 are open_clip's own; the last block is the dual-softmax block
x1 = x + W_o[(softmax(s q qᵀ + Bias) + softmax(s k kᵀ + Bias)) v] (per head, same bias for all heads and
both softmaxes), x2 = x1 + MLP(LN2(x1)), with the residual/attention weights of the preset.

``ClipTextGraph``: tokens (K, 77) int64 + EOT positions (K,) int64 -> (K, 512) float32 un-normalised text
features, identical to ``model.encode_text(tokens)``; the EOT position is an input (instead of an
argmax over token ids inside the graph) so that the graph stays TensorRT-friendly and exact in fp16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _mha_params(attn: nn.MultiheadAttention) -> tuple[torch.Tensor, torch.Tensor | None, nn.Linear, int]:
    return attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, int(attn.num_heads)


def last_block(
    blk: nn.Module,
    x: torch.Tensor,
    bias: torch.Tensor,
    *,
    attention: str = "dual",
    mode: str = "sum",
    scale: float | None = None,
    residual_weight: float = 1.0,
    attention_weight: float = 1.0,
    keep_ffn: bool = True,
) -> torch.Tensor:
    """Reference §2 modified last block on (N, L, C) tokens with an (N, L, L) additive bias.

    attention: "dual" -> A = S_q + S_k with S_q = softmax(s q qᵀ + Bias), S_k = softmax(s k kᵀ + Bias)
    (mode "mean" halves A); "qk" -> CLIP's softmax(s q kᵀ + Bias); "identity" -> A v = v (MaskCLIP, the
    bias is ignored). x1 = rw * x + aw * W_o(A v); x2 = x1 + MLP(LN2(x1)) when keep_ffn.
    """
    w, b, out_proj, heads = _mha_params(blk.attn)
    N, L, C = x.shape
    hd = C // heads
    s = float(scale) if scale is not None else hd**-0.5
    u = blk.ln_1(x)
    qkv = F.linear(u, w, b).reshape(N, L, 3, heads, hd).permute(2, 0, 3, 1, 4)  # (3, N, h, L, hd)
    q, k, v = qkv[0], qkv[1], qkv[2]
    bb = bias.unsqueeze(1)  # the same bias for every head (and both softmaxes)
    if attention == "identity":
        o = v
    elif attention == "qk":
        o = torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * s + bb, dim=-1), v)
    elif attention == "dual":
        s_q = torch.softmax(torch.matmul(q, q.transpose(-1, -2)) * s + bb, dim=-1)
        s_k = torch.softmax(torch.matmul(k, k.transpose(-1, -2)) * s + bb, dim=-1)
        a = s_q + s_k
        if mode == "mean":
            a = a * 0.5
        o = torch.matmul(a, v)
    else:
        raise ValueError(f"unknown attention {attention!r}")
    o = out_proj(o.transpose(1, 2).reshape(N, L, C))
    x1 = residual_weight * x + attention_weight * blk.ls_1(o)
    if not keep_ffn:
        return x1
    return x1 + blk.ls_2(blk.mlp(blk.ln_2(x1)))


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
        defaults = {"attention": "dual", "attention_mode": "sum", "scale": None, "residual_weight": 1.0,
                    "attention_weight": 1.0, "keep_ffn": True}
        self.opts = {k: getattr(config, k, d) for k, d in defaults.items()}

    def forward(self, pixels: torch.Tensor, pos_embed: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.conv1(pixels)
        N, C = x.shape[0], x.shape[1]
        x = x.reshape(N, C, -1).transpose(1, 2)
        cls = v.class_embedding.reshape(1, 1, C).expand(N, -1, -1)
        x = torch.cat([cls, x], dim=1) + pos_embed.unsqueeze(0)
        x = v.ln_pre(x)
        blocks = v.transformer.resblocks
        for blk in blocks[:-1]:
            x = blk(x)
        o = self.opts
        x = last_block(
            blocks[-1], x, bias, attention=o["attention"], mode=o["attention_mode"], scale=o["scale"],
            residual_weight=o["residual_weight"], attention_weight=o["attention_weight"], keep_ffn=o["keep_ffn"],
        )
        x = v.ln_post(x[:, 1:, :])
        return x @ v.proj


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
