"""CUDA-only checks of the Triton kernels: fp32/fp16/bf16 accuracy against the PyTorch twins, autotuning keyed
per GPU model, and the dense GPU pooling path. Skipped without a GPU (tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from tests._kernels_helpers import attention_inputs, random_pixel_masks, rel_err
from tusss.kernels import (
    mask_bitsets,
    mask_pool,
    masked_dual_attention,
    paper_attention,
    paper_packed_attention,
    resolve_backend,
    unpack_paper,
)

pytestmark = pytest.mark.cuda

# (B, heads, grid, M)
SHAPES = [(40, 12, (14, 14), 40), (1, 12, (28, 42), 300), (2, 12, (28, 42), 40)]
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


_inputs = attention_inputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_dual_attention_dtypes(shape, dtype):
    q, k, v, tm = _inputs(*shape)
    bits = mask_bitsets(tm).cuda()
    ref = masked_dual_attention(q.cuda(), k.cuda(), v.cuda(), bits, backend="torch")  # fp32 twin
    qc, kc, vc = (t.cuda().to(dtype) for t in (q, k, v))
    assert resolve_backend(qc) == "triton"
    out = masked_dual_attention(qc, kc, vc, bits, backend="triton")
    assert out.dtype == dtype and out.shape == q.shape
    assert rel_err(out.float(), ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_packed_attention_dtypes(dtype):
    q, k, v, tm = _inputs(4, 12, (14, 14), 40)
    q, k, v, tm = q.cuda(), k.cuda(), v.cuda(), tm.cuda()
    shared, ref, p = paper_attention(q, k, v, tm, backend="torch")
    out = paper_packed_attention(*(t.to(dtype) for t in (q, k, v)), p, backend="triton")
    assert out.dtype == dtype
    assert rel_err(out.float(), ref) < TOL[dtype]
    assert unpack_paper(shared, out.float(), p).shape == (4, 40, 12, 197, 64)


def test_autotune_cache_keyed_by_gpu_model():
    from tusss.kernels import attention_triton
    from tusss.kernels._triton_util import device_key

    q, k, v, tm = _inputs(8, 12, (14, 14), 40)
    q, k, v = q.cuda(), k.cuda(), v.cuda()
    masked_dual_attention(q, k, v, tm.cuda(), backend="triton")
    tuner = attention_triton._dual_attn_fwd
    keys = [key for key in tuner.cache if device_key(q) in key and 197 in key]
    assert keys, f"no autotune entry for this GPU model in {list(tuner.cache)}"
    assert tuner.cache[keys[0]].kwargs["BLOCK_M"] in (32, 64, 128)
    masked_dual_attention(q, k, v, tm.cuda(), backend="triton")  # second call reuses the tuned config
    assert len([key for key in tuner.cache if device_key(q) in key and 197 in key]) == len(keys)


def test_pooling_on_gpu_matches_cpu():
    gen = torch.Generator().manual_seed(0)
    masks = random_pixel_masks(40, 375, 500, gen, tiny=4)
    feats = torch.randn(28, 38, 512, generator=gen)
    cpu = mask_pool(feats, masks)
    gpu = mask_pool(feats.cuda(), masks.cuda())
    assert rel_err(gpu.cpu(), cpu) < 1e-4
