"""Triton kernel: packed variable-length dual-softmax attention for the ``paper`` preset (see packed.py).

Grid (segments, q-blocks, heads). A program loads BLOCK_M query tokens of one (window, mask) segment by their
token indices, starts both online softmaxes with the CLS key (when visible), then streams only the segment's
own keys: the total work is Σ n_m² instead of M·L².
"""

from __future__ import annotations

import torch

from ._triton_util import HAS_TRITON, LOG2E, device_key, head_dim_pad, kernel_configs, prepare_qkv, require_triton
from .packed import PackedMasks

__all__ = ["packed_attention_triton"]

if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._triton_util import dual_softmax_tile

    _CONFIGS = kernel_configs((64, 64), [(32, 32, 4, 2), (64, 32, 4, 2), (64, 64, 4, 2), (128, 64, 8, 2),
                                         (32, 64, 4, 3)])

    @triton.autotune(configs=_CONFIGS, key=["MAXLEN_BUCKET", "HD", "dev_key"], cache_results=True)
    @triton.jit
    def _packed_fwd(Q, K, V, TOK, SEG_OFF, SEG_B, OUT,
                    sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sot, soh,
                    scale2, out_scale, MAXLEN_BUCKET, dev_key,
                    HD: tl.constexpr, HD_PAD: tl.constexpr, CLS_VISIBLE: tl.constexpr, IEEE: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        s = tl.program_id(0)  # segments on axis 0 (grid limit 2^31-1; axes 1 and 2 are limited to 65535)
        pid_m = tl.program_id(1)
        h = tl.program_id(2)
        start = tl.load(SEG_OFF + s)
        end = tl.load(SEG_OFF + s + 1)
        if pid_m * BLOCK_M < end - start:
            b = tl.load(SEG_B + s)
            offs_d = tl.arange(0, HD_PAD)
            dmask = offs_d < HD
            rows = start + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            rmask = rows < end
            tok = tl.load(TOK + rows, mask=rmask, other=0)
            ldm = rmask[:, None] & dmask[None, :]
            qb = Q + b * sqb + h * sqh
            kb = K + b * skb + h * skh
            vb = V + b * svb + h * svh
            qi = tl.load(qb + tok[:, None] * sql + offs_d[None, :], mask=ldm, other=0.0)
            ki = tl.load(kb + tok[:, None] * skl + offs_d[None, :], mask=ldm, other=0.0)
            if CLS_VISIBLE:
                q0 = tl.load(qb + offs_d, mask=dmask, other=0.0).to(tl.float32)
                k0 = tl.load(kb + offs_d, mask=dmask, other=0.0).to(tl.float32)
                v0 = tl.load(vb + offs_d, mask=dmask, other=0.0).to(tl.float32)
                m1 = tl.sum(qi.to(tl.float32) * q0[None, :], 1) * scale2
                m2 = tl.sum(ki.to(tl.float32) * k0[None, :], 1) * scale2
                l1 = tl.full([BLOCK_M], 1.0, tl.float32)
                l2 = tl.full([BLOCK_M], 1.0, tl.float32)
                acc1 = tl.zeros([BLOCK_M, HD_PAD], tl.float32) + v0[None, :]
                acc2 = tl.zeros([BLOCK_M, HD_PAD], tl.float32) + v0[None, :]
            else:
                m1 = tl.full([BLOCK_M], float("-inf"), tl.float32)
                m2 = tl.full([BLOCK_M], float("-inf"), tl.float32)
                l1 = tl.zeros([BLOCK_M], tl.float32)
                l2 = tl.zeros([BLOCK_M], tl.float32)
                acc1 = tl.zeros([BLOCK_M, HD_PAD], tl.float32)
                acc2 = tl.zeros([BLOCK_M, HD_PAD], tl.float32)
            for js in range(start, end, BLOCK_N):
                cols = js + tl.arange(0, BLOCK_N)
                cmask = cols < end
                tj = tl.load(TOK + cols, mask=cmask, other=0)
                cl = cmask[:, None] & dmask[None, :]
                qj = tl.load(qb + tj[:, None] * sql + offs_d[None, :], mask=cl, other=0.0)
                kj = tl.load(kb + tj[:, None] * skl + offs_d[None, :], mask=cl, other=0.0)
                vj = tl.load(vb + tj[:, None] * svl + offs_d[None, :], mask=cl, other=0.0)
                bias = tl.where(cmask[None, :], 0.0, float("-inf"))
                m1, l1, acc1, m2, l2, acc2 = dual_softmax_tile(qi, ki, qj, kj, vj, bias, scale2,
                                                               m1, l1, acc1, m2, l2, acc2, IEEE)
            out = (acc1 / l1[:, None] + acc2 / l2[:, None]) * out_scale
            tl.store(OUT + rows[:, None] * sot + h * soh + offs_d[None, :], out.to(OUT.dtype.element_ty), mask=ldm)


def packed_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: PackedMasks, *,
                            cls_visible: bool = True, scale: float | None = None, mode: str = "sum") -> torch.Tensor:
    """Triton version of :func:`kernels.packed.packed_attention_torch` (same arguments, (T, H, hd) output)."""
    require_triton()
    _, nh, _, hd = q.shape
    if scale is None:
        scale = hd**-0.5
    q, k, v = prepare_qkv(q, k, v)
    out = torch.empty(packed.total, nh, hd, dtype=v.dtype, device=v.device)
    if packed.total == 0:
        return out
    dev = q.device
    tok = packed.token_index.to(dev).contiguous()
    offs = packed.seg_offsets.to(dev).contiguous()
    segb = packed.seg_batch.to(dev).contiguous()
    maxlen = max(packed.max_len, 1)
    hd_pad = head_dim_pad(hd)

    def grid(meta):
        return (packed.num_segments, triton.cdiv(maxlen, meta["BLOCK_M"]), nh)

    _packed_fwd[grid](
        q, k, v, tok, offs, segb, out,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1),
        float(scale) * LOG2E, 0.5 if mode == "mean" else 1.0, triton.next_power_of_2(maxlen), device_key(q),
        HD=hd, HD_PAD=hd_pad, CLS_VISIBLE=bool(cls_visible), IEEE=q.dtype == torch.float32,
    )
    return out
