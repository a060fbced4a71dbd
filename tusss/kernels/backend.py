"""The one reader of ``TUSSS_KERNELS=triton|torch|auto|reference`` (default auto) and the backend resolver.

auto  = Triton for CUDA tensors (when triton is installed), the PyTorch twin otherwise (CPU).
triton = always Triton; on CPU tensors this needs the interpreter (TRITON_INTERPRET=1 set before the kernel
         modules are imported), else an InputError is raised.
torch = always the PyTorch twin.
reference = the PyTorch twin, and DBAClip runs the per-mask bias (``paper`` preset) as one last-block pass per mask
         instead of the packed ragged attention (the plain materialised-bias path).
The variable is read at every call. Both backends compute the same function (tests check it).
"""

from __future__ import annotations

import os

import torch

from tusss.errors import InputError

from ._triton_util import HAS_TRITON, interpreting

__all__ = ["ENV_VAR", "CHOICES", "kernel_setting", "resolve_backend"]

ENV_VAR = "TUSSS_KERNELS"
CHOICES = ("auto", "triton", "torch", "reference")


def kernel_setting(backend: str | None = None) -> str:
    """The validated setting: ``backend`` if given, else ``$TUSSS_KERNELS`` (``"auto"`` when unset or empty)."""
    choice = (backend or os.environ.get(ENV_VAR, "auto") or "auto").strip().lower()
    if choice not in CHOICES:
        raise InputError(f"{ENV_VAR} must be one of triton|torch|auto|reference, got {choice!r}")
    return choice


def resolve_backend(t: torch.Tensor, backend: str | None = None) -> str:
    """'triton' or 'torch' for tensor ``t``, from ``backend`` or ``$TUSSS_KERNELS`` (auto when unset)."""
    choice = kernel_setting(backend)
    if choice in ("torch", "reference"):
        return "torch"
    if choice == "auto":
        return "triton" if (HAS_TRITON and t.is_cuda) else "torch"
    if not HAS_TRITON:
        raise InputError(f"{ENV_VAR}=triton but triton is not installed")
    if not t.is_cuda and not interpreting():
        raise InputError(f"{ENV_VAR}=triton needs CUDA tensors (got device {t.device}) or TRITON_INTERPRET=1 "
                         "set before tusss.kernels is imported")
    return "triton"
