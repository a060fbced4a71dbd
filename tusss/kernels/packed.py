"""Packed ragged attention for the ``paper`` preset (paper Eq. 9: per-mask hard bias B = m̂ m̂ᵀ ∨ I).

With a hard bias (c → ∞) a token outside mask m attends only to itself (and to CLS when ``cls_visible``), which
does not depend on m. So the M per-mask passes (cost M·L²) split into
  * one *shared* pass: every token's output when it is outside the mask (O(L)), and the CLS row
    (the CLS query is never biased: it sees all tokens), identical for all masks;
  * one *packed* variable-length pass: for every (window b, mask m) segment, the tokens of m attend to the
    tokens of m (+ CLS when visible) — cost Σ n_m².
Per-mask output of token i: packed row if i ∈ m, else the shared row. Visibility used everywhere:
    vis_m(i, j) = (i ∈ m and j ∈ m) or i == j or i == 0 or (cls_visible and j == 0)
(:func:`masked_dual_attention` with force_diagonal=True run once per mask: the ``paper`` preset, c = 100 there).
The softmaxes are (softmax(s q qᵀ + B) + softmax(s k kᵀ + B)) v (mode "sum"; "mean" halves it, Eq. 9).
With a finite c the result differs by O(L·e^{-c}) relative (≈ 1e-11 for c = 30 in fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tusss.errors import InputError

__all__ = ["PackedMasks", "pack_token_masks", "paper_shared_pass", "packed_attention_torch",
           "unpack_paper", "paper_attention_reference"]


@dataclass
class PackedMasks:
    """Ragged token lists of all (window, mask) segments; built by :func:`pack_token_masks`.

    token_index (T,) int32: token position l in [1, L) (CLS = 0 excluded), segments concatenated.
    seg_offsets (S+1,) int32, seg_batch (S,) int32 (window b), seg_mask (S,) int32 (mask m).
    Segments are ordered by (b, m); masks with no token in a window have no segment there.
    """

    token_index: torch.Tensor
    seg_offsets: torch.Tensor
    seg_batch: torch.Tensor
    seg_mask: torch.Tensor
    num_windows: int
    num_masks: int
    seq_len: int
    max_len: int

    @property
    def num_segments(self) -> int:
        return int(self.seg_batch.numel())

    @property
    def total(self) -> int:
        return int(self.token_index.numel())


def pack_token_masks(token_masks: torch.Tensor) -> PackedMasks:
    """token_masks (B, M, N) bool (N = L-1 patch tokens) -> :class:`PackedMasks`."""
    if not isinstance(token_masks, torch.Tensor) or token_masks.dim() != 3 or token_masks.dtype != torch.bool:
        got = f"{getattr(token_masks, 'dtype', type(token_masks))} {tuple(getattr(token_masks, 'shape', ()))}"
        raise InputError(f"token_masks must be a (B, M, N) bool tensor, got {got}")
    b, m, n = token_masks.shape
    counts = token_masks.sum(-1).flatten()  # (B·M,)
    keep = counts > 0
    nz = torch.nonzero(token_masks.reshape(b * m, n))  # (T, 2) sorted by (segment, token)
    seg = torch.nonzero(keep).flatten()
    lens = counts[seg]
    offsets = torch.zeros(seg.numel() + 1, dtype=torch.int64, device=token_masks.device)
    offsets[1:] = torch.cumsum(lens, 0)
    return PackedMasks(
        token_index=(nz[:, 1] + 1).to(torch.int32), seg_offsets=offsets.to(torch.int32),
        seg_batch=(seg // m).to(torch.int32), seg_mask=(seg % m).to(torch.int32),
        num_windows=b, num_masks=m, seq_len=n + 1, max_len=int(lens.max()) if lens.numel() else 0)


def paper_shared_pass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, cls_visible: bool = True,
                      scale: float | None = None, mode: str = "sum") -> torch.Tensor:
    """Output of every token when it lies outside the mask (and of CLS). q, k, v (B, H, L, hd) -> (B, H, L, hd)."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    fac = 0.5 if mode == "mean" else 1.0
    out = torch.empty_like(v)
    if cls_visible:  # patch tokens: 2-way softmax over {CLS, self}
        qf, kf, vf = q.float(), k.float(), v.float()
        o = torch.zeros_like(vf[:, :, 1:])
        for x in (qf, kf):
            s_self = (x[:, :, 1:] * x[:, :, 1:]).sum(-1) * scale
            s_cls = (x[:, :, 1:] * x[:, :, :1]).sum(-1) * scale
            p_cls = torch.sigmoid(s_cls - s_self)
            o = o + p_cls.unsqueeze(-1) * vf[:, :, :1] + (1.0 - p_cls).unsqueeze(-1) * vf[:, :, 1:]
        out[:, :, 1:] = (o * fac).to(v.dtype)
    else:  # patch tokens see only themselves: both softmaxes are one-hot
        out[:, :, 1:] = v[:, :, 1:] * (2.0 * fac)
    # CLS row: never biased, attends every token
    cls = F.scaled_dot_product_attention(q[:, :, :1], q, v, scale=scale)
    cls = cls + F.scaled_dot_product_attention(k[:, :, :1], k, v, scale=scale)
    out[:, :, :1] = cls * fac
    return out


def packed_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: PackedMasks, *,
                           cls_visible: bool = True, scale: float | None = None, mode: str = "sum") -> torch.Tensor:
    """Per-mask outputs of the tokens inside each mask. q, k, v (B, H, L, hd) -> (T, H, hd), rows in
    ``packed.token_index`` order. Segments are bucketed by length (powers of two) and padded inside a bucket,
    so each bucket is one ``scaled_dot_product_attention`` call per softmax."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    _, nh, _, hd = q.shape
    dev = q.device
    out = torch.empty(packed.total, nh, hd, dtype=v.dtype, device=dev)
    if packed.total == 0:
        return out
    offs = packed.seg_offsets.to(device=dev, dtype=torch.int64)
    lens = (offs[1:] - offs[:-1]).cpu()
    bucket = torch.ceil(torch.log2(lens.double())).long()
    tok_all = packed.token_index.to(device=dev, dtype=torch.int64)
    seg_batch = packed.seg_batch.to(device=dev, dtype=torch.int64)
    fac = 0.5 if mode == "mean" else 1.0
    for bk in torch.unique(bucket).tolist():
        segs = torch.nonzero(bucket == bk).flatten().to(dev)
        n = int(lens[segs.cpu()].max())
        start = offs[segs]
        slen = offs[segs + 1] - start
        ar = torch.arange(n, device=dev)
        valid = ar[None, :] < slen[:, None]  # (S_c, n)
        rows = torch.where(valid, start[:, None] + ar[None, :], start[:, None])  # padded rows -> first row
        tok = tok_all[rows]  # (S_c, n)
        bidx = seg_batch[segs]

        qs, ks, vs = (x[bidx[:, None], :, tok].transpose(1, 2) for x in (q, k, v))  # (S_c, H, n, hd)
        kmask = valid
        if cls_visible:
            qk, kk, vk = (torch.cat([x[bidx, :, :1], xs], 2) for x, xs in ((q, qs), (k, ks), (v, vs)))
            kmask = torch.cat([torch.ones_like(valid[:, :1]), valid], 1)
        else:
            qk, kk, vk = qs, ks, vs
        am = kmask[:, None, None, :]
        o = F.scaled_dot_product_attention(qs, qk, vk, attn_mask=am, scale=scale)
        o = o + F.scaled_dot_product_attention(ks, kk, vk, attn_mask=am, scale=scale)
        o = (o * fac).transpose(1, 2)  # (S_c, n, H, hd)
        out[rows[valid]] = o[valid]
    return out


def unpack_paper(shared: torch.Tensor, packed_out: torch.Tensor, packed: PackedMasks) -> torch.Tensor:
    """Dense per-mask outputs (B, M, H, L, hd) from the shared and packed passes (for tests / simple wiring;
    materialises M copies)."""
    b, nh, L, hd = shared.shape
    dense = shared.unsqueeze(1).expand(b, packed.num_masks, nh, L, hd).clone()
    dev = shared.device
    offs = packed.seg_offsets.to(device=dev, dtype=torch.int64)
    seg_of_row = torch.repeat_interleave(torch.arange(packed.num_segments, device=dev), offs[1:] - offs[:-1])
    bi = packed.seg_batch.to(dev).long()[seg_of_row]
    mi = packed.seg_mask.to(dev).long()[seg_of_row]
    dense[bi, mi, :, packed.token_index.to(dev).long()] = packed_out.to(dense.dtype)
    return dense


def paper_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, token_masks: torch.Tensor, *,
                              cls_visible: bool = True, scale: float | None = None, mode: str = "sum",
                              c: float = float("inf")) -> torch.Tensor:
    """M separate last-block attention passes with the materialised per-mask bias −c(1−B) (B = m̂m̂ᵀ ∨ I, CLS
    row open, CLS column open when ``cls_visible``). q, k, v (B, H, L, hd), token_masks (B, M, L-1)
    -> (B, M, H, L, hd)."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    b, nh, L, hd = q.shape
    m = token_masks.shape[1]
    eye = torch.eye(L, dtype=torch.bool, device=q.device)
    outs = []
    for j in range(m):
        tm = torch.zeros(b, L, dtype=torch.bool, device=q.device)
        tm[:, 1:] = token_masks[:, j]
        vis = (tm[:, :, None] & tm[:, None, :]) | eye
        vis[:, 0, :] = True
        if cls_visible:
            vis[:, :, 0] = True
        bias = torch.where(vis, 0.0, -c).to(q.dtype)[:, None]  # (B, 1, L, L)
        o = F.scaled_dot_product_attention(q, q, v, attn_mask=bias, scale=scale)
        o = o + F.scaled_dot_product_attention(k, k, v, attn_mask=bias, scale=scale)
        outs.append(o * (0.5 if mode == "mean" else 1.0))
    return torch.stack(outs, 1)
