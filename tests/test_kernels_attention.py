"""Mask-biased dual-softmax attention: bitsets, PyTorch twin and Triton kernel (CPU interpreter) against a
plain computation with the materialised L×L bias and two explicit softmaxes (docs/reference-code.md §2)."""

from __future__ import annotations

import functools

import pytest
import torch

from tests._kernels_helpers import (
    attention_inputs,
    one_thread,  # noqa: F401 (autouse fixture: torch on one thread)
    random_token_masks,
    rel_err,
    run_in_interpreter,
)
from tusss.errors import InputError
from tusss.kernels import mask_bitsets, masked_dual_attention, resolve_backend, unpack_bitsets


def naive_dual_attention(q, k, v, token_masks, bias_value=-4.0, cls_visible=True, scale=None, mode="sum",
                         force_diagonal=False):
    """Independent reference: C = Σ_m m̂m̂ᵀ, Bias = 0 where C > 0.5 else bias_value, CLS query row 0, CLS column 0
    if cls_visible, optional forced diagonal, two explicit softmaxes."""
    q, k, v = q.double(), k.double(), v.double()
    b, _, L, hd = q.shape
    s = hd**-0.5 if scale is None else scale
    tm = token_masks.float()
    c = torch.einsum("bmi,bmj->bij", tm, tm)  # exact integer counts
    bias = torch.full((b, L, L), float(bias_value), dtype=torch.float64)
    bias[:, 1:, 1:] = torch.where(c > 0.5, 0.0, float(bias_value))
    bias[:, 0, :] = 0.0
    if cls_visible:
        bias[:, :, 0] = 0.0
    if force_diagonal:
        bias[:, torch.arange(L), torch.arange(L)] = 0.0
    bias = bias[:, None]
    a = torch.softmax(s * q @ q.transpose(-1, -2) + bias, -1) + torch.softmax(s * k @ k.transpose(-1, -2) + bias, -1)
    out = a @ v
    return out * 0.5 if mode == "mean" else out


# (windows B, heads, grid (h, w), masks M, cls_visible, mode, bias)
CASES = [
    (1, 2, (14, 14), 1, True, "sum", -4.0),  # L = 197, one mask
    (6, 1, (14, 14), 40, True, "sum", -4.0),  # many windows
    (1, 1, (28, 42), 300, True, "sum", -4.0),  # L = 1177 global pass, 300 masks (10 words)
    (1, 1, (28, 42), 40, True, "sum", -4.0),  # L = 1177, 40 masks
    (2, 1, (14, 14), 40, False, "mean", -8.0),  # Cityscapes-style cls_visible=False
    (3, 1, (14, 14), 33, True, "sum", -2.0),  # M just above one word
]
# paper-style soft bias with forced diagonal (tusss/clip "paper" preset: per mask, c = 100, mean)
DIAG_CASE = (4, 1, (14, 14), 1, True, "mean", -100.0)


@functools.cache
def _inputs(case, seed=0):
    return attention_inputs(*case[:4], seed=seed)


def test_bitsets_roundtrip_and_sharing():
    gen = torch.Generator().manual_seed(1)
    for m in (1, 31, 32, 33, 300):
        tm = torch.rand(2, m, 50, generator=gen) < 0.1
        bits = mask_bitsets(tm)
        assert bits.dtype == torch.int32 and bits.shape == (2, 50, (m + 31) // 32)
        assert torch.equal(unpack_bitsets(bits, m), tm)
        share = ((bits[:, :, None, :] & bits[:, None, :, :]) != 0).any(-1)
        ref = torch.einsum("bmi,bmj->bij", tm.double(), tm.double()) > 0.5
        assert torch.equal(share, ref)
    with pytest.raises(InputError):
        mask_bitsets(torch.zeros(2, 3))
    with pytest.raises(InputError):
        mask_bitsets(torch.zeros(1, 2, 3))


def test_token_masks_cover_edge_cases():
    q, k, v, tm = _inputs(CASES[1])
    cov = tm.any(1)
    assert (~cov).any(), "some tokens must be covered by no mask"
    assert (tm.sum(1) > 1).any(), "some tokens must lie in several masks"
    assert (tm.sum(-1) == 0).any(), "some (tiny) masks must have no token"


@pytest.mark.parametrize("case", CASES)
def test_torch_twin_matches_naive(case):
    q, k, v, tm = _inputs(case)
    *_, cls_visible, mode, bias = case
    ref = naive_dual_attention(q, k, v, tm, bias, cls_visible, mode=mode)
    out = masked_dual_attention(q, k, v, tm, bias_value=bias, cls_visible=cls_visible, mode=mode, backend="torch")
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_err(out, ref) < 1e-4


def _strided_case():
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 197, 3, 4, 32, generator=gen)  # as produced by a fused in-projection
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, L, hd) strided views, head_dim 32
    return q, k, v, random_token_masks(2, 10, (14, 14), gen)


@pytest.fixture(scope="module")
def triton_outputs():
    """All Triton calls of this module in one interpreter subprocess (TRITON_INTERPRET=1)."""
    jobs = []
    for case in CASES:
        q, k, v, tm = _inputs(case, seed=2)
        *_, cls_visible, mode, bias = case
        jobs.append({"fn": "attention", "args": [q, k, v, mask_bitsets(tm)],
                     "kwargs": {"bias_value": bias, "cls_visible": cls_visible, "mode": mode}})
    q, k, v, tm = _strided_case()
    jobs.append({"fn": "attention", "args": [q, k, v, tm], "kwargs": {"scale": 0.3}})
    q, k, v, tm = _inputs(DIAG_CASE, seed=2)
    jobs.append({"fn": "attention", "args": [q, k, v, tm],
                 "kwargs": {"bias_value": -100.0, "mode": "mean", "force_diagonal": True}})
    return run_in_interpreter(jobs)


@pytest.mark.parametrize("i", range(len(CASES)))
def test_triton_interpreter_matches_naive(triton_outputs, i):
    case = CASES[i]
    q, k, v, tm = _inputs(case, seed=2)
    *_, cls_visible, mode, bias = case
    ref = naive_dual_attention(q, k, v, tm, bias, cls_visible, mode=mode)
    out = triton_outputs[i]
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_err(out, ref) < 1e-4


def test_triton_non_contiguous_and_head_dim_32(triton_outputs):
    q, k, v, tm = _strided_case()
    ref = naive_dual_attention(q, k, v, tm, scale=0.3)
    assert rel_err(triton_outputs[len(CASES)], ref) < 1e-4


def test_triton_force_diagonal(triton_outputs):
    q, k, v, tm = _inputs(DIAG_CASE, seed=2)
    ref = naive_dual_attention(q, k, v, tm, -100.0, True, mode="mean", force_diagonal=True)
    assert rel_err(triton_outputs[len(CASES) + 1], ref) < 1e-4


@pytest.mark.parametrize("force_diagonal", [False, True])
def test_torch_twin_force_diagonal_and_no_bias(force_diagonal):
    q, k, v, tm = _inputs(DIAG_CASE)
    ref = naive_dual_attention(q, k, v, tm, -100.0, False, mode="mean", force_diagonal=force_diagonal)
    out = masked_dual_attention(q, k, v, tm, bias_value=-100.0, cls_visible=False, mode="mean",
                                force_diagonal=force_diagonal, backend="torch")
    assert rel_err(out, ref) < 1e-4
    no_bias = naive_dual_attention(q, k, v, torch.ones_like(tm))  # one mask covering everything = no bias
    assert rel_err(masked_dual_attention(q, k, v, None), no_bias) < 1e-4


def test_backend_selection(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.delenv("TUSSS_KERNELS", raising=False)
    assert resolve_backend(cpu) == "torch"  # auto on CPU
    monkeypatch.setenv("TUSSS_KERNELS", "torch")
    assert resolve_backend(cpu) == "torch"
    monkeypatch.setenv("TUSSS_KERNELS", "cuda")
    with pytest.raises(InputError):
        resolve_backend(cpu)
    assert resolve_backend(cpu, "torch") == "torch"
    from tusss.kernels._triton_util import HAS_TRITON, interpreting

    if HAS_TRITON and not interpreting():  # CPU tensors cannot run compiled Triton kernels
        monkeypatch.setenv("TUSSS_KERNELS", "triton")
        with pytest.raises(InputError, match="TRITON_INTERPRET"):
            masked_dual_attention(torch.randn(1, 1, 5, 16), torch.randn(1, 1, 5, 16), torch.randn(1, 1, 5, 16),
                                  torch.ones(1, 1, 4, dtype=torch.bool))


def test_input_errors():
    q = torch.randn(1, 2, 197, 64)
    with pytest.raises(InputError):
        masked_dual_attention(q, q, q, torch.zeros(1, 3, 100, dtype=torch.bool))
    with pytest.raises(InputError):
        masked_dual_attention(q, q, q, torch.zeros(1, 3, 196, dtype=torch.bool), mode="avg")
    with pytest.raises(InputError):
        masked_dual_attention(q, q, q.double(), torch.zeros(1, 3, 196, dtype=torch.bool))
    with pytest.raises(InputError):
        masked_dual_attention(q, q, q, torch.zeros(1, 3, 196))
