"""Triton kernel: mask-biased dual-softmax attention with the bias computed on the fly from bitsets.

One program handles BLOCK_M query rows of one (window, head). It streams the keys once in BLOCK_N tiles and
keeps two online softmaxes (running max/sum and accumulator for s·q qᵀ + Bias and for s·k kᵀ + Bias).
The bias tile is rebuilt from the int32 membership words of the row and column tokens; no L×L tensor exists.
Reference §2 ("Modified last block", "Attention bias").
"""

from __future__ import annotations

import torch

from ._triton_util import HAS_TRITON, LOG2E, device_key, head_dim_pad, kernel_configs, prepare_qkv, require_triton

__all__ = ["dual_attention_triton"]

if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._triton_util import dual_softmax_tile

    _CONFIGS = kernel_configs((256, 256), [(64, 64, 4, 2), (64, 32, 4, 3), (128, 64, 8, 2), (128, 32, 4, 3),
                                           (64, 64, 4, 3), (128, 128, 8, 2), (32, 64, 4, 2)])

    @triton.autotune(configs=_CONFIGS, key=["L", "NW", "HD", "dev_key"], cache_results=True)
    @triton.jit
    def _dual_attn_fwd(Q, K, V, BITS, OUT,
                       sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sob, soh, sol, sbb, sbl,
                       H, L, NW, scale2, bias2, out_scale, dev_key,
                       HD: tl.constexpr, HD_PAD: tl.constexpr, CLS_VISIBLE: tl.constexpr, FORCE_DIAG: tl.constexpr,
                       IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_bh = tl.program_id(0)  # windows·heads on axis 0 (axis 1 is limited to 65535)
        pid_m = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HD_PAD)
        dmask = offs_d < HD
        mrow = offs_m < L
        row_patch = (offs_m > 0) & mrow
        ld_mask = mrow[:, None] & dmask[None, :]
        qi = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sql + offs_d[None, :], mask=ld_mask, other=0.0)
        ki = tl.load(K + b * skb + h * skh + offs_m[:, None] * skl + offs_d[None, :], mask=ld_mask, other=0.0)

        m1 = tl.full([BLOCK_M], float("-inf"), tl.float32)
        m2 = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l1 = tl.zeros([BLOCK_M], tl.float32)
        l2 = tl.zeros([BLOCK_M], tl.float32)
        acc1 = tl.zeros([BLOCK_M, HD_PAD], tl.float32)
        acc2 = tl.zeros([BLOCK_M, HD_PAD], tl.float32)
        bits_row = BITS + b * sbb + (offs_m - 1) * sbl

        for start_n in range(0, L, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            ncol = offs_n < L
            col_patch = (offs_n > 0) & ncol
            cl_mask = ncol[:, None] & dmask[None, :]
            qj = tl.load(Q + b * sqb + h * sqh + offs_n[:, None] * sql + offs_d[None, :], mask=cl_mask, other=0.0)
            kj = tl.load(K + b * skb + h * skh + offs_n[:, None] * skl + offs_d[None, :], mask=cl_mask, other=0.0)
            vj = tl.load(V + b * svb + h * svh + offs_n[:, None] * svl + offs_d[None, :], mask=cl_mask, other=0.0)
            # Bias tile from the membership words (0 where the two tokens share a mask).
            share = tl.zeros([BLOCK_M, BLOCK_N], tl.int32)
            bits_col = BITS + b * sbb + (offs_n - 1) * sbl
            for w in range(NW):
                bi = tl.load(bits_row + w, mask=row_patch, other=0)
                bj = tl.load(bits_col + w, mask=col_patch, other=0)
                share = share | (bi[:, None] & bj[None, :])
            vis = (share != 0) | (offs_m[:, None] == 0)  # the CLS query row is never biased
            if CLS_VISIBLE:
                vis = vis | (offs_n[None, :] == 0)
            if FORCE_DIAG:
                vis = vis | (offs_m[:, None] == offs_n[None, :])
            bias = tl.where(vis, 0.0, bias2)
            bias = tl.where(ncol[None, :], bias, float("-inf"))
            m1, l1, acc1, m2, l2, acc2 = dual_softmax_tile(qi, ki, qj, kj, vj, bias, scale2,
                                                           m1, l1, acc1, m2, l2, acc2, IEEE)

        out = (acc1 / l1[:, None] + acc2 / l2[:, None]) * out_scale
        tl.store(OUT + b * sob + h * soh + offs_m[:, None] * sol + offs_d[None, :],
                 out.to(OUT.dtype.element_ty), mask=ld_mask)


def dual_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bitsets: torch.Tensor, *,
                          bias_value: float = -4.0, cls_visible: bool = True, scale: float | None = None,
                          mode: str = "sum", force_diagonal: bool = False) -> torch.Tensor:
    """Triton version of :func:`kernels.attention_torch.dual_attention_torch` (same arguments/shapes)."""
    require_triton()
    bsz, nh, L, hd = q.shape
    if scale is None:
        scale = hd**-0.5
    q, k, v = prepare_qkv(q, k, v)
    bitsets = bitsets.contiguous()
    out = torch.empty_like(q)
    nw = bitsets.shape[-1]
    hd_pad = head_dim_pad(hd)

    def grid(meta):
        return (bsz * nh, triton.cdiv(L, meta["BLOCK_M"]))

    _dual_attn_fwd[grid](
        q, k, v, bitsets, out,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        bitsets.stride(0), bitsets.stride(1),
        nh, L, nw, float(scale) * LOG2E, float(bias_value) * LOG2E, 0.5 if mode == "mean" else 1.0,
        device_key(q),
        HD=hd, HD_PAD=hd_pad, CLS_VISIBLE=bool(cls_visible), FORCE_DIAG=bool(force_diagonal),
        IEEE=q.dtype == torch.float32,
    )
    return out
