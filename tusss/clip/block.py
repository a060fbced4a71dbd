"""The CLIP ViT image tower split for DBA-CLIP: embeddings + blocks 0..n-2 unchanged, the modified last block
(docs/reference-code.md §2 "Modified last block"), and the LN_post + proj readout of the patch tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tusss.clip.config import DBAClipConfig
from tusss.kernels import (
    PackedMasks,
    mask_bitsets,
    masked_dual_attention,
    paper_attention,
    unpack_bitsets,
)
from tusss.kernels.attention_torch import build_attention_bias
from tusss.kernels.backend import kernel_setting

#: bias_value at or below which the per-mask bias runs packed: e^-30 ≈ 1e-13, below fp32 resolution.
PACKED_MAX_BIAS = -30.0


def use_reference() -> bool:
    """``TUSSS_KERNELS=reference``: the plain materialised-bias PyTorch path: the PyTorch twin of the attention
    (tusss.kernels resolves ``reference`` to it) and, for ``bias="per_mask"``, one last-block pass per mask
    instead of the packed ragged attention."""
    return kernel_setting() == "reference"


@dataclass
class PerMaskFeatures:
    """Token features of one batch of passes under the per-mask bias, without M dense copies.

    Feature of patch token t of pass b for mask m = ``packed[r]`` if token t lies in mask m in pass b (row r of
    the segment (b, m) in ``packing``), else ``shared[b, t]`` (a token outside the mask sees only itself and CLS).

    shared (B, h·w, Dout) (row-major patch tokens); packed (T, Dout); packing: the :class:`tusss.kernels.PackedMasks`;
    row_pass (T,) int64 pass index b of each packed row; row_token (T,) int64 patch index t (row-major).
    """

    shared: torch.Tensor
    packed: torch.Tensor
    packing: PackedMasks
    row_pass: torch.Tensor
    row_token: torch.Tensor

    def row_mask(self) -> torch.Tensor:
        """(T,) int64 mask index m of each packed row."""
        offs = self.packing.seg_offsets.to(self.packed.device).long()
        return torch.repeat_interleave(self.packing.seg_mask.to(self.packed.device).long(), offs[1:] - offs[:-1])


def resize_pos_embed(
    pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], mode: str = "bicubic"
) -> torch.Tensor:
    """Resize a (1 + gh*gw, D) positional embedding to ``new_grid`` (docs/reference-code.md §2 ``resize_pos_embed2d``).

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

    def embed(self, images: torch.Tensor, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) normalised images (H, W multiples of the patch) -> (B, 1 + h*w, D) after ln_pre.

        ``pos_embed``: the (1 + h*w, D) positional embedding of the grid (default :meth:`pos_embed`; the exported
        windows graph takes it as an input)."""
        v = self.visual
        x = v.conv1(images)
        B, D, h, w = x.shape
        x = x.reshape(B, D, h * w).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).view(1, 1, D).expand(B, 1, D)
        pos = self.pos_embed((h, w)) if pos_embed is None else pos_embed
        x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
        return v.ln_pre(x)

    def trunk(self, images: torch.Tensor, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings + blocks 0..n-2 (unchanged, no bias): (B, 3, H, W) -> (B, L, D)."""
        x = self.embed(images, pos_embed)
        for blk in self.visual.transformer.resblocks[:-1]:
            x = blk(x)
        return x

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        """LN_post on all tokens, keep the patch tokens, multiply by ``proj``: (..., L, D) -> (..., L-1, Dout)."""
        return self._project(x[..., 1:, :])

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """LN_post + ``proj`` of single tokens: (..., D) -> (..., Dout) (token-wise)."""
        x = self.visual.ln_post(x)
        proj = self.visual.proj
        return x @ proj if proj is not None else x

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LN1 + in-projection of the last block: (B, L, D) -> q, k, v (B, heads, L, head_dim)."""
        blk = self.visual.transformer.resblocks[-1]
        attn: nn.MultiheadAttention = blk.attn
        B, L, D = x.shape
        H = attn.num_heads
        qkv = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.reshape(B, L, 3, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def _finish(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Rest of the last block, token-wise: x (..., D) block input, o (..., heads, head_dim) attention output
        -> x1 = rw x + aw W_o o, x2 = x1 + MLP(LN2(x1)) (..., D)."""
        cfg = self.cfg
        blk = self.visual.transformer.resblocks[-1]
        o = F.linear(o.reshape(*o.shape[:-2], -1), blk.attn.out_proj.weight, blk.attn.out_proj.bias)
        x = cfg.residual_weight * x + cfg.attention_weight * blk.ls_1(o)
        if cfg.keep_ffn:
            x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        return x

    def last_block(self, x: torch.Tensor, token_masks: torch.Tensor | None = None, *,
                   attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Modified last block (docs/reference-code.md §2): x1 = rw x + aw W_o[A v], x2 = x1 + MLP(LN2(x1)).

        The one implementation of the block: eager DBA-CLIP, the engine's exported windows graph
        (:class:`tusss.export.clip.ClipWindowsGraph`, through ``attn_bias``) and the per-mask passes all run it;
        the ``dual`` attention is the ``tusss::masked_dual_attention`` op (:func:`tusss.kernels.masked_dual_attention`).

        Args:
            x: (B, L, D) tokens entering the last block.
            token_masks: (B, M, L-1) bool (for ``bias="per_mask"``: one mask per sequence, M = 1), or their
                (B, L-1, ceil(M/32)) int32 bitsets (:func:`tusss.kernels.mask_bitsets`) for the ``dual``
                attention; ignored (may be None) for ``bias="none"``.
            attn_bias: (B, L, L) float additive bias already materialised (the exported graphs' input), used as
                is instead of ``token_masks`` whatever ``cfg.bias`` says (ignored by the ``identity`` attention).
        Returns:
            (B, L, D) tokens after the block.
        """
        cfg = self.cfg
        q, k, v = self._qkv(x)
        tm = token_masks if (cfg.bias != "none" and attn_bias is None) else None
        if cfg.attention == "dual":  # the custom op: Triton (bias rebuilt from bitsets) or the PyTorch twin
            o = masked_dual_attention(q, k, v, tm, bias_value=cfg.bias_value, cls_visible=cfg.cls_visible,
                                      scale=cfg.scale, mode=cfg.attention_mode, force_diagonal=cfg.force_diagonal,
                                      attn_bias=attn_bias)
        elif cfg.attention == "qk":
            bias = attn_bias
            if bias is None and tm is not None:
                if tm.dtype != torch.bool:
                    tm = unpack_bitsets(tm)
                bias = build_attention_bias(
                    tm, bias_value=cfg.bias_value, cls_visible=cfg.cls_visible,
                    force_diagonal=cfg.force_diagonal, dtype=q.dtype,
                )
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype)[:, None],
                                               scale=cfg.scale)
        else:  # "identity": MaskCLIP (Eq. 5), every token keeps its own value vector
            o = v
        return self._finish(x, o.transpose(1, 2))

    def packed_ok(self) -> bool:
        """Whether the ``per_mask`` bias can run as one packed pass (:meth:`per_mask_packed`): dual attention,
        forced diagonal, a bias large enough for the hard-bias identity (e^bias_value < 1e-13), not the
        reference backend."""
        cfg = self.cfg
        return (cfg.attention == "dual" and cfg.force_diagonal and cfg.bias_value <= PACKED_MAX_BIAS
                and not use_reference())

    def per_mask_packed(self, x: torch.Tensor, token_masks: torch.Tensor) -> PerMaskFeatures:
        """Last block + readout of the ``per_mask`` bias for all masks at once (paper Eq. 9, reference ``paper``
        preset): one shared pass gives every token's output outside a mask (it sees only itself and CLS), one
        packed ragged pass the outputs of each mask's tokens (:func:`tusss.kernels.paper_attention`).

        Args:
            x: (B, L, D) tokens entering the last block; token_masks: (B, M, L-1) bool.
        """
        cfg = self.cfg
        q, k, v = self._qkv(x)
        shared, packed_out, pm = paper_attention(q, k, v, token_masks, cls_visible=cfg.cls_visible,
                                                 scale=cfg.scale, mode=cfg.attention_mode)
        f_shared = self.readout(self._finish(x, shared.transpose(1, 2)))  # (B, L-1, Dout)
        offs = pm.seg_offsets.to(x.device).long()
        rows_b = torch.repeat_interleave(pm.seg_batch.to(x.device).long(), offs[1:] - offs[:-1])
        tok = pm.token_index.to(x.device).long()
        f_packed = self._project(self._finish(x[rows_b, tok], packed_out))  # (T, Dout)
        return PerMaskFeatures(f_shared, f_packed, pm, rows_b, tok - 1)

    # ----------------------------------------------------------------- full pass
    @torch.no_grad()
    def features(self, images: torch.Tensor, token_masks: torch.Tensor | None
                 ) -> torch.Tensor | PerMaskFeatures:
        """One DBA-CLIP pass over a batch of equally sized crops.

        Args:
            images: (B, 3, H, W) normalised float images.
            token_masks: (B, M, h*w) bool token membership (M may be 0 when there is no bias).
        Returns:
            joint / no bias: (B, h, w, Dout); per-mask bias: a :class:`PerMaskFeatures` (packed path), or
            (B, M, h, w, Dout) (features of pass m for mask m; reference backend or non-packable options).
        """
        B, _, Hh, Ww = images.shape
        h, w = Hh // self.patch, Ww // self.patch
        x = self.trunk(images)
        cfg = self.cfg
        if cfg.bias != "per_mask":
            tm = token_masks
            if tm is not None and cfg.bias != "none" and cfg.attention == "dual":
                tm = mask_bitsets(tm)  # once per window batch, shared by all heads and both softmaxes
            out = self.readout(self.last_block(x, tm))
            return out.reshape(B, h, w, -1)
        assert token_masks is not None
        if self.packed_ok():
            return self.per_mask_packed(x, token_masks)
        return self.per_mask_passes(x, token_masks).reshape(B, token_masks.shape[1], h, w, -1)

    def per_mask_passes(self, x: torch.Tensor, token_masks: torch.Tensor) -> torch.Tensor:
        """Last block + readout once per (crop, mask) with that mask's bias (paper Eq. 9 taken literally; the
        reference backend and per-mask options the packed path does not cover). x (B, L, D), token_masks
        (B, M, L-1) bool -> (B, M, L-1, Dout). Chunked by ``max_batch_tokens``."""
        B, L, _ = x.shape
        M = token_masks.shape[1]
        chunk = max(1, self.cfg.max_batch_tokens // L)  # sequences (crop, mask) per chunk
        flat_t = token_masks.reshape(B * M, 1, -1)
        outs = []
        for s in range(0, B * M, chunk):
            idx = torch.arange(s, min(s + chunk, B * M), device=x.device)
            outs.append(self.readout(self.last_block(x[idx // M], flat_t[idx])))
        return torch.cat(outs, 0).reshape(B, M, L - 1, -1)
