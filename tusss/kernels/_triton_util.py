"""Shared helpers for the Triton kernels: availability, interpreter mode, autotune keys."""

from __future__ import annotations

import math
import zlib

import torch

try:  # triton is optional at run time (CPU-only installs use the PyTorch twins)
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "LOG2E", "interpreting", "device_key", "triton_usable", "dual_softmax_tile", "kernel_configs",
           "prepare_qkv", "head_dim_pad", "require_triton"]

LOG2E = 1.0 / math.log(2.0)  # the kernels use exp2: logits are scaled by log2(e)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1, read at kernel import)."""
    if not HAS_TRITON:
        return False
    from triton import knobs

    return bool(knobs.runtime.interpret)


def triton_usable(t: torch.Tensor) -> bool:
    """Whether a Triton kernel can run on tensor ``t`` (CUDA, or CPU under the interpreter)."""
    return HAS_TRITON and (t.is_cuda or (t.device.type == "cpu" and interpreting()))


def device_key(t: torch.Tensor) -> int:
    """Autotune key component naming the GPU *model*, so tuned configs are cached per GPU model.

    triton's on-disk autotune cache (``cache_results=True``) is keyed by compiler target (architecture);
    adding this value to the key separates e.g. H100 from H200 (both sm_90). 0 on CPU.
    """
    if t.is_cuda:
        name = torch.cuda.get_device_name(t.device)
        return zlib.crc32(name.encode()) & 0x3FFFFFFF
    return 0


def require_triton() -> None:
    """Raise when triton is missing (the kernels' entry points; dispatch only selects Triton when present)."""
    if not HAS_TRITON:  # pragma: no cover
        raise RuntimeError("triton is not installed")


def kernel_configs(interpreter: tuple[int, int], gpu: list[tuple[int, int, int, int]]) -> list:
    """Autotune configs: one (BLOCK_M, BLOCK_N) config under the CPU interpreter (it runs numpy per tile: large
    tiles = few iterations; one config = no benchmarking), else the GPU list of (BLOCK_M, BLOCK_N, warps, stages)."""
    import triton

    if interpreting():
        bm, bn = interpreter
        return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)  # pragma: no cover
            for bm, bn, w, st in gpu]


def prepare_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v with unit stride on the head dimension (the kernels' loads assume it)."""
    return tuple(t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))


def head_dim_pad(hd: int) -> int:
    """Head dimension padded to a power of two >= 16 (tl.dot's minimum)."""
    import triton

    return max(16, triton.next_power_of_2(hd))


if HAS_TRITON:
    # Device functions shared by the kernels (attention_triton, packed_triton). Decorated here, at import time, so
    # they follow TRITON_INTERPRET like the kernels that call them.

    @triton.jit
    def tile_dot(a, b, IEEE: tl.constexpr):
        """a @ b with fp32 accumulation: exact fp32 products for fp32 inputs, tensor cores (a cast to b's dtype)
        for fp16/bf16."""
        if IEEE:
            return tl.dot(a, b, input_precision="ieee")
        else:
            return tl.dot(a.to(b.dtype), b)

    @triton.jit
    def _online_softmax_step(m, l, acc, s, vj, IEEE: tl.constexpr):
        mn = tl.maximum(m, tl.max(s, 1))
        a = tl.exp2(m - mn)
        p = tl.exp2(s - mn[:, None])
        return mn, l * a + tl.sum(p, 1), acc * a[:, None] + tile_dot(p, vj, IEEE)

    @triton.jit
    def dual_softmax_tile(qi, ki, qj, kj, vj, bias, scale2, m1, l1, acc1, m2, l2, acc2, IEEE: tl.constexpr):
        """One key tile of the two online softmaxes (base 2) of the dual attention.

        Logits s·log2e·qi qjᵀ + bias and s·log2e·ki kjᵀ + bias (``scale2`` = s·log2e; ``bias`` (BLOCK_M, BLOCK_N)
        in log2 units, −inf on padding columns); running max m, sum l and accumulator acc of each softmax are
        updated with the values vj. Returns (m1, l1, acc1, m2, l2, acc2).
        """
        s1 = tile_dot(qi, tl.trans(qj), IEEE) * scale2 + bias
        s2 = tile_dot(ki, tl.trans(kj), IEEE) * scale2 + bias
        m1, l1, acc1 = _online_softmax_step(m1, l1, acc1, s1, vj, IEEE)
        m2, l2, acc2 = _online_softmax_step(m2, l2, acc2, s2, vj, IEEE)
        return m1, l1, acc1, m2, l2, acc2
