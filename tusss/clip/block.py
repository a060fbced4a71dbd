"""The CLIP ViT image tower split for DBA-CLIP: embeddings + blocks 0..n-2 unchanged, the modified last block
(reference §2 "Modified last block"), and the LN_post + proj readout of the patch tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tusss.clip.attention import build_attention_bias, dual_softmax_attention
from tusss.clip.config import DBAClipConfig


def resize_pos_embed(
    pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], mode: str = "bicubic"
) -> torch.Tensor:
    """Resize a (1 + gh*gw, D) positional embedding to ``new_grid`` (reference §2 ``resize_pos_embed2d``).

    The CLS entry is kept; the grid is interpolated with ``mode`` (align_corners False, no antialias).
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos
    cls, grid = pos[:1], pos[1:]
    D = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], D).permute(0, 3, 1, 2)
    kw = {} if mode in ("nearest", "area") else {"align_corners": False}
    grid = F.interpolate(grid, size=tuple(new_grid), mode=mode, **kw)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], D)
    return torch.cat([cls, grid], dim=0)


class TowerRunner:
    """Runs an open_clip ``VisionTransformer`` in the pieces DBA-CLIP needs.

    Args:
        visual: ``open_clip`` ``VisionTransformer`` (``model.visual``) with standard residual blocks.
        cfg: the DBA-CLIP configuration (last-block behaviour).
    """

    def __init__(self, visual: nn.Module, cfg: DBAClipConfig):
        self.visual = visual
        self.cfg = cfg
        self.patch = int(visual.patch_size[0])
        self.base_grid = tuple(int(g) for g in visual.grid_size)
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}

    # ----------------------------------------------------------------- pieces
    def pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1 + h*w, D) positional embedding for a token grid (cached)."""
        pos = self.visual.positional_embedding
        key = (int(grid[0]), int(grid[1]))
        hit = self._pos_cache.get(key)
        if hit is None or hit.device != pos.device or hit.dtype != pos.dtype:
            hit = resize_pos_embed(pos.detach(), self.base_grid, key, self.cfg.pos_embed_interpolation)
            self._pos_cache[key] = hit
        return hit

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images (H, W multiples of the patch) -> (B, 1 + h*w, D) after ln_pre."""
        v = self.visual
        x = v.conv1(images)
        B, D, h, w = x.shape
        x = x.reshape(B, D, h * w).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).view(1, 1, D).expand(B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.pos_embed((h, w)).to(x.dtype)
        return v.ln_pre(x)

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings + blocks 0..n-2 (unchanged, no bias): (B, 3, H, W) -> (B, L, D)."""
        x = self.embed(images)
        for blk in self.visual.transformer.resblocks[:-1]:
            x = blk(x)
        return x

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        """LN_post on all tokens, keep the patch tokens, multiply by ``proj``: (..., L, D) -> (..., L-1, Dout)."""
        x = self.visual.ln_post(x)[..., 1:, :]
        proj = self.visual.proj
        return x @ proj if proj is not None else x

    def last_block(self, x: torch.Tensor, token_masks: torch.Tensor | None) -> torch.Tensor:
        """Modified last block (reference §2): x1 = rw x + aw W_o[A v], x2 = x1 + MLP(LN2(x1)).

        Args:
            x: (B, L, D) tokens entering the last block.
            token_masks: (B, M, L-1) bool for ``bias="joint"``; (B, 1, L-1) per sequence for ``"per_mask"``
                (the caller expands the batch); ignored (may be None) for ``bias="none"``.
        Returns:
            (B, L, D) tokens after the block.
        """
        cfg = self.cfg
        blk = self.visual.transformer.resblocks[-1]
        attn: nn.MultiheadAttention = blk.attn
        B, L, D = x.shape
        H = attn.num_heads
        hd = D // H
        u = blk.ln_1(x)
        qkv = F.linear(u, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.reshape(B, L, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, hd) each
        tm = token_masks if cfg.bias != "none" else None
        if cfg.attention == "dual":
            o = dual_softmax_attention(
                q, k, v, tm, bias_value=cfg.bias_value, cls_visible=cfg.cls_visible, scale=cfg.scale,
                mode=cfg.attention_mode, force_diagonal=cfg.force_diagonal,
            )
        elif cfg.attention == "qk":
            bias = None
            if tm is not None:
                bias = build_attention_bias(
                    tm, bias_value=cfg.bias_value, cls_visible=cfg.cls_visible,
                    force_diagonal=cfg.force_diagonal, dtype=q.dtype,
                )[:, None]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=cfg.scale)
        else:  # "identity": MaskCLIP (Eq. 5), every token keeps its own value vector
            o = v
        o = o.transpose(1, 2).reshape(B, L, D)
        o = F.linear(o, attn.out_proj.weight, attn.out_proj.bias)
        x = cfg.residual_weight * x + cfg.attention_weight * blk.ls_1(o)
        if cfg.keep_ffn:
            x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        return x

    # ----------------------------------------------------------------- full pass
    @torch.no_grad()
    def features(self, images: torch.Tensor, token_masks: torch.Tensor | None) -> torch.Tensor:
        """One DBA-CLIP pass over a batch of equally sized crops.

        Args:
            images: (B, 3, H, W) normalised float images.
            token_masks: (B, M, h*w) bool token membership (M may be 0 when there is no bias).
        Returns:
            joint / no bias: (B, h, w, Dout); per-mask bias: (B, M, h, w, Dout) (features of pass m for mask m).
        """
        B, _, Hh, Ww = images.shape
        h, w = Hh // self.patch, Ww // self.patch
        x = self.trunk(images)
        L = x.shape[1]
        if self.cfg.bias != "per_mask":
            out = self.readout(self.last_block(x, token_masks))
            return out.reshape(B, h, w, -1)
        assert token_masks is not None
        M = token_masks.shape[1]
        chunk = max(1, self.cfg.max_batch_tokens // L)  # sequences (crop, mask) per chunk
        flat_t = token_masks.reshape(B * M, 1, -1)
        outs = []
        for s in range(0, B * M, chunk):
            idx = torch.arange(s, min(s + chunk, B * M), device=x.device)
            outs.append(self.readout(self.last_block(x[idx // M], flat_t[idx])))
        return torch.cat(outs, 0).reshape(B, M, h, w, -1)
