"""Shared helpers for the Triton kernels: availability, interpreter mode, autotune keys."""

from __future__ import annotations

import zlib

import torch

try:  # triton is optional at run time (CPU-only installs use the PyTorch twins)
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "interpreting", "device_key", "triton_usable"]


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
