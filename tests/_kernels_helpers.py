"""Shared helpers of the tests/test_kernels_*.py files: Triton interpreter mode and random mask generators."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

WORKER = Path(__file__).with_name("_kernels_interp_worker.py")


def run_in_interpreter(jobs: list[dict[str, Any]], timeout: float = 300.0) -> list[Any]:
    """Run Triton kernel calls in a subprocess under the CPU interpreter and return their outputs.

    triton 3.8 reads TRITON_INTERPRET via ``triton.knobs.runtime.interpret`` (os.environ, looked up on access),
    but ``@triton.jit`` decides between compiling and interpreting when a function is *decorated* — including
    triton's own library functions (tl.max, tl.sum, … in triton/language/standard.py), decorated when triton is
    first imported. So the variable must be set before triton is imported at all; as other test modules may
    already have imported it in this pytest process, the kernels run in a fresh interpreter process.
    Each job: {"fn": "attention" | "packed", "args": [...tensors...], "kwargs": {...}}.
    """
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "jobs.pt", Path(tmp) / "out.pt"
        torch.save(jobs, src)
        env = dict(os.environ, TRITON_INTERPRET="1", TUSSS_KERNELS="triton")
        proc = subprocess.run([sys.executable, str(WORKER), str(src), str(dst)], env=env, capture_output=True,
                              text=True, timeout=timeout, cwd=str(WORKER.parent.parent))
        if proc.returncode != 0:
            raise RuntimeError(f"interpreter worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return torch.load(dst, weights_only=False)


@contextlib.contextmanager
def single_thread():
    """Run torch on one thread: on the shared 2-core test machine, OpenMP oversubscription made the small
    reference computations of these tests up to 70x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Module-wide :func:`single_thread`; import it into a test module to activate it there (autouse)."""
    with single_thread():
        yield


def random_pixel_masks(n: int, h: int, w: int, gen: torch.Generator, *, tiny: int = 0) -> torch.Tensor:
    """(n, h, w) bool: random overlapping rectangles/blobs of varied size; the last ``tiny`` masks are 1–4 px
    (smaller than one 16-px patch). Every mask is non-empty."""
    out = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        if i >= n - tiny:
            s = int(torch.randint(1, 5, (1,), generator=gen))
            y = int(torch.randint(0, h - s + 1, (1,), generator=gen))
            x = int(torch.randint(0, w - s + 1, (1,), generator=gen))
            out[i, y:y + s, x:x + s] = True
            continue
        mh = int(torch.randint(max(2, h // 20), max(3, h // 2), (1,), generator=gen))
        mw = int(torch.randint(max(2, w // 20), max(3, w // 2), (1,), generator=gen))
        y = int(torch.randint(0, h - mh + 1, (1,), generator=gen))
        x = int(torch.randint(0, w - mw + 1, (1,), generator=gen))
        blob = torch.rand(mh // 4 + 1, mw // 4 + 1, generator=gen) < 0.7
        blob = F.interpolate(blob[None, None].float(), size=(mh, mw), mode="nearest")[0, 0].bool()
        blob[mh // 2, mw // 2] = True
        out[i, y:y + mh, x:x + mw] |= blob
    return out


def token_masks_from_pixels(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Reference §2 step 1: nearest downsampling of the float masks to the token grid -> (M, h·w) bool."""
    t = F.interpolate(masks[None].float(), size=grid, mode="nearest")[0] > 0.5
    return t.reshape(masks.shape[0], -1)


def random_token_masks(b: int, m: int, grid: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """(b, m, h·w) token masks of windows: pixel masks (incl. some smaller than a patch → possibly no token)
    downsampled with the reference's nearest rule. Some tokens are covered by no mask, some by several."""
    h, w = grid
    outs = []
    for _ in range(b):
        pm = random_pixel_masks(m, 16 * h, 16 * w, gen, tiny=max(0, m // 8))
        outs.append(token_masks_from_pixels(pm, grid))
    return torch.stack(outs)


def attention_inputs(b: int, h: int, grid: tuple[int, int], m: int, seed: int = 0, head_dim: int = 64
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q, k, v (b, h, L, head_dim), L = h·w + 1, and (b, m, h·w) token masks (:func:`random_token_masks`)."""
    gen = torch.Generator().manual_seed(seed)
    L = grid[0] * grid[1] + 1
    q, k, v = (torch.randn(b, h, L, head_dim, generator=gen) for _ in range(3))
    return q, k, v, random_token_masks(b, m, grid, gen)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))
