"""Deliberately naive DBA-CLIP + GSW written straight from docs/reference-code.md §2-3 (test oracle, slow, no batching).

API:
    naive_embed_masks(clip_model, image, masks, cfg) -> (M, D) float32
    naive_pass(visual, image_chw, token_masks, cfg) -> (D, h, w) or (M, D, h, w) token map of one pass
    naive_bias(token_masks, cfg) -> (L, L) bias of one sequence (explicit loops)
    naive_last_block(block, x, bias, cfg) -> (L, D) last block by hand from the open_clip block's weights
    bilinear_matrix(in_size, out_size) -> (out, in) float64 (align_corners=False, formula)

Independent of tusss.clip: explicit window loops, full-resolution canvases, dense up-sampling by the textbook
bilinear formula, explicit bias construction, and the last block recomputed from raw weights. Only the
operations the reference defines *as* PyTorch/PIL calls (``F.interpolate`` nearest / nearest-exact /
bicubic, PIL bicubic) are called directly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of 1-D bilinear resizing, align_corners=False (PyTorch's source-index rule)."""
    Wm = np.zeros((out_size, in_size), dtype=np.float64)
    scale = in_size / out_size
    for o in range(out_size):
        src = max((o + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(math.floor(src)), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        lam = src - i0
        Wm[o, i0] += 1.0 - lam
        Wm[o, i1] += lam
    return Wm


def upsample(fmap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., C, h, w) -> (..., C, H, W) bilinear by the dense formula (float64)."""
    Ay = torch.from_numpy(bilinear_matrix(fmap.shape[-2], size[0]))
    Ax = torch.from_numpy(bilinear_matrix(fmap.shape[-1], size[1]))
    return torch.einsum("Yy,...yx,Xx->...YX", Ay, fmap.double(), Ax)


def naive_bias(token_masks: torch.Tensor | None, L: int, cfg) -> torch.Tensor:
    """(M, N) bool token membership -> (L, L) bias (docs/reference-code.md §2 steps 1-3), by explicit loops."""
    bias = torch.zeros(L, L, dtype=torch.float64)
    if token_masks is None or cfg.bias == "none":
        return bias
    N = L - 1
    allowed = np.zeros((N, N), dtype=bool)
    tm = token_masks.numpy()
    for m in range(tm.shape[0]):
        idx = np.flatnonzero(tm[m])
        allowed[np.ix_(idx, idx)] = True  # tokens of one mask see each other
    if cfg.force_diagonal:
        allowed[np.arange(N), np.arange(N)] = True
    inner = bias[1:, 1:]
    inner[torch.from_numpy(~allowed)] = cfg.bias_value
    if not cfg.cls_visible:
        bias[1:, 0] = cfg.bias_value
    return bias


def _act(mod: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if type(mod).__name__ == "QuickGELU":
        return x * torch.sigmoid(1.702 * x)
    return F.gelu(x)


def naive_last_block(block, x: torch.Tensor, bias: torch.Tensor, cfg) -> torch.Tensor:
    """The modified last block on one sequence x (L, D), recomputed from the block's raw weights (float64)."""
    d = lambda t: t.detach().double()  # noqa: E731
    x = x.double()
    L, D = x.shape
    H = block.attn.num_heads
    hd = D // H
    u = F.layer_norm(x, (D,), d(block.ln_1.weight), d(block.ln_1.bias), block.ln_1.eps)
    qkv = u @ d(block.attn.in_proj_weight).t() + d(block.attn.in_proj_bias)
    q, k, v = qkv[:, :D], qkv[:, D:2 * D], qkv[:, 2 * D:]
    s = cfg.scale if cfg.scale is not None else hd ** -0.5
    heads = []
    for h in range(H):
        qh, kh, vh = (t[:, h * hd:(h + 1) * hd] for t in (q, k, v))
        if cfg.attention == "identity":
            heads.append(vh)
            continue
        if cfg.attention == "qk":
            A = torch.softmax(s * qh @ kh.t() + bias, dim=-1)
        else:
            A = torch.softmax(s * qh @ qh.t() + bias, dim=-1) + torch.softmax(s * kh @ kh.t() + bias, dim=-1)
            if cfg.attention_mode == "mean":
                A = A / 2
        heads.append(A @ vh)
    o = torch.cat(heads, dim=1) @ d(block.attn.out_proj.weight).t() + d(block.attn.out_proj.bias)
    x = cfg.residual_weight * x + cfg.attention_weight * o
    if cfg.keep_ffn:
        u2 = F.layer_norm(x, (D,), d(block.ln_2.weight), d(block.ln_2.bias), block.ln_2.eps)
        hdn = _act(block.mlp.gelu, u2 @ d(block.mlp.c_fc.weight).t() + d(block.mlp.c_fc.bias))
        x = x + hdn @ d(block.mlp.c_proj.weight).t() + d(block.mlp.c_proj.bias)
    return x


@torch.no_grad()
def naive_trunk(visual, img: torch.Tensor, cfg) -> torch.Tensor:
    """(3, H, W) -> (L, D) tokens entering the last block (pos-embed bicubic-resized when not 14x14)."""
    p = visual.patch_size[0]
    H, W = img.shape[-2:]
    h, w = H // p, W // p
    x = F.conv2d(img[None].float(), visual.conv1.weight, stride=p)[0]  # (D, h, w)
    D = x.shape[0]
    x = x.reshape(D, h * w).t()
    pos = visual.positional_embedding.detach()
    g0 = visual.grid_size
    if (h, w) != tuple(g0):
        grid = pos[1:].reshape(1, g0[0], g0[1], D).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid[0].permute(1, 2, 0).reshape(h * w, D)], 0)
    x = torch.cat([visual.class_embedding[None], x], 0) + pos
    x = visual.ln_pre(x)[None]
    for blk in visual.transformer.resblocks[:-1]:
        x = blk(x)
    return x[0]


@torch.no_grad()
def naive_pass(visual, img: torch.Tensor, token_masks: torch.Tensor | None, cfg) -> torch.Tensor:
    """One pass: (3, H, W) and (M, h, w) bool token masks -> (D, h, w) map (per-mask bias: (M, D, h, w))."""
    p = visual.patch_size[0]
    h, w = img.shape[-2] // p, img.shape[-1] // p
    x = naive_trunk(visual, img, cfg)
    L = x.shape[0]
    blk = visual.transformer.resblocks[-1]

    def readout(y: torch.Tensor) -> torch.Tensor:
        D = y.shape[1]
        y = F.layer_norm(y, (D,), visual.ln_post.weight.double(), visual.ln_post.bias.double(),
                         visual.ln_post.eps)[1:]
        y = y @ visual.proj.double()
        return y.t().reshape(-1, h, w)

    if cfg.bias == "per_mask":
        outs = []
        for m in range(token_masks.shape[0]):
            bias = naive_bias(token_masks[m:m + 1].reshape(1, -1), L, cfg)
            outs.append(readout(naive_last_block(blk, x, bias, cfg)))
        return torch.stack(outs, 0)
    tm = None if token_masks is None else token_masks.reshape(token_masks.shape[0], -1)
    return readout(naive_last_block(blk, x, naive_bias(tm, L, cfg), cfg))


def _starts(size: int, win: int, stride: int) -> list[int]:
    if win >= size:
        return [0]
    out = []
    k = 0
    while True:
        s = k * stride
        if s + win >= size:
            out.append(size - win)
            break
        out.append(s)
        k += 1
    return out


@torch.no_grad()
def naive_embed_masks(clip_model, image: np.ndarray, masks: np.ndarray, cfg) -> np.ndarray:
    """Mask embeddings by docs/reference-code.md §2-3, step by step. ``clip_model``: open_clip CLIP; ``cfg``:
    DBAClipConfig."""
    visual = clip_model.visual
    p = visual.patch_size[0]
    H0, W0 = masks.shape[1:]
    M = masks.shape[0]
    # resize: short side -> target, round, then up to a multiple of 16 (PIL bicubic)
    scale = 1.0 if cfg.target_size is None else cfg.target_size / min(H0, W0)
    Hr = int(math.ceil(round(scale * H0) / cfg.size_divisor) * cfg.size_divisor)
    Wr = int(math.ceil(round(scale * W0) / cfg.size_divisor) * cfg.size_divisor)
    pil = Image.fromarray(image)
    if (Hr, Wr) != (H0, W0):
        pil = pil.resize((Wr, Hr), Image.BICUBIC)
    arr = torch.tensor(np.array(pil), dtype=torch.float32) / 255.0
    mean = torch.tensor(cfg.image_mean).view(1, 1, 3)
    std = torch.tensor(cfg.image_std).view(1, 1, 3)
    img = ((arr - mean) / std).permute(2, 0, 1)
    mf = torch.from_numpy(masks).float()[:, None]  # (M, 1, H0, W0)
    per_mask = cfg.bias == "per_mask"
    D = visual.output_dim
    shape = (M, D, Hr, Wr) if per_mask else (D, Hr, Wr)
    fused = torch.zeros(shape, dtype=torch.float64)

    if cfg.global_weight > 0:
        h, w = Hr // p, Wr // p
        tm = F.interpolate(mf, size=(h, w), mode=cfg.token_downsample)[:, 0] > 0.5
        g = naive_pass(visual, img, tm, cfg)
        fused += cfg.global_weight * upsample(g, (Hr, Wr))
    if cfg.global_weight < 1:
        mr = F.interpolate(mf, size=(Hr, Wr), mode=cfg.mask_resize)[:, 0]  # (M, Hr, Wr)
        n_sizes = len(cfg.window_sizes)
        for win in cfg.window_sizes:
            stride = win // cfg.stride_divisor
            wh, ww = min(win, Hr), min(win, Wr)
            canvas = torch.zeros(shape, dtype=torch.float64)
            count = torch.zeros(Hr, Wr, dtype=torch.float64)
            for y0 in _starts(Hr, wh, stride):
                for x0 in _starts(Wr, ww, stride):
                    crop = img[:, y0:y0 + wh, x0:x0 + ww]
                    mcrop = mr[:, None, y0:y0 + wh, x0:x0 + ww]
                    tm = F.interpolate(mcrop, size=(wh // p, ww // p), mode=cfg.token_downsample)[:, 0] > 0.5
                    f = naive_pass(visual, crop, tm, cfg)
                    canvas[..., y0:y0 + wh, x0:x0 + ww] += upsample(f, (wh, ww))
                    count[y0:y0 + wh, x0:x0 + ww] += 1
            fused += (1 - cfg.global_weight) / n_sizes * canvas / count
    out = np.zeros((M, D), dtype=np.float64)
    full = None if per_mask else upsample(fused, (H0, W0))  # (D, H0, W0)
    for m in range(M):
        if per_mask:
            full = upsample(fused[m], (H0, W0))
        sel = torch.from_numpy(masks[m])
        out[m] = full[:, sel].mean(dim=1).numpy()
    return out.astype(np.float32)
