"""Packed ragged attention of the ``paper`` preset (Eq. 9, B = m̂m̂ᵀ ∨ I) against M separate passes with the
materialised hard per-mask bias and two explicit softmaxes."""

from __future__ import annotations

import functools

import pytest
import torch

from tests._kernels_helpers import (
    attention_inputs,
    one_thread,  # noqa: F401 (autouse fixture: torch on one thread)
    rel_err,
    run_in_interpreter,
)
from tusss.errors import InputError
from tusss.kernels import masked_dual_attention, pack_token_masks, paper_attention, unpack_paper


def naive_paper_attention(q, k, v, token_masks, cls_visible=True, mode="sum", c=1e4):
    """For every mask separately: Bias = −c·(1 − B), B = m̂m̂ᵀ ∨ I (+ CLS row, + CLS column if cls_visible),
    two softmaxes."""
    b, _, L, hd = q.shape
    s = hd**-0.5
    lq = s * q @ q.transpose(-1, -2)  # the logits do not depend on the mask
    lk = s * k @ k.transpose(-1, -2)
    eye = torch.eye(L, dtype=torch.bool)
    outs = []
    for j in range(token_masks.shape[1]):
        mm = torch.zeros(b, L, dtype=torch.bool)
        mm[:, 1:] = token_masks[:, j]
        B = (mm[:, :, None] & mm[:, None, :]) | eye
        B[:, 0, :] = True  # the CLS query row is never biased
        if cls_visible:
            B[:, :, 0] = True
        bias = (-c * (~B).float())[:, None]
        a = torch.softmax(lq + bias, -1) + torch.softmax(lk + bias, -1)
        outs.append(a @ v * (0.5 if mode == "mean" else 1.0))
    return torch.stack(outs, 1)


# (windows B, heads, grid, masks M, cls_visible, mode)
CASES = [
    (1, 2, (14, 14), 1, True, "sum"),
    (4, 1, (14, 14), 40, True, "sum"),
    (2, 1, (14, 14), 40, False, "mean"),
    (1, 1, (28, 42), 40, True, "sum"),  # L = 1177
    (1, 1, (14, 14), 300, True, "mean"),
]


@functools.cache
def _inputs(case, seed=0):
    q, k, v, tm = attention_inputs(*case[:4], seed=seed)
    if case[3] == 1:
        tm[:, 0, :90] = True  # one big mask spanning several 64-token tiles
    return q, k, v, tm


def test_pack_token_masks():
    tm = torch.zeros(2, 3, 5, dtype=torch.bool)
    tm[0, 0, [1, 3]] = True
    tm[0, 2, [0, 1, 2, 3, 4]] = True
    tm[1, 1, [4]] = True
    p = pack_token_masks(tm)  # hand-computed: segments (0,0), (0,2), (1,1)
    assert p.token_index.tolist() == [2, 4, 1, 2, 3, 4, 5, 5]
    assert p.seg_offsets.tolist() == [0, 2, 7, 8]
    assert p.seg_batch.tolist() == [0, 0, 1] and p.seg_mask.tolist() == [0, 2, 1]
    assert p.max_len == 5 and p.seq_len == 6 and p.total == 8
    with pytest.raises(InputError):
        pack_token_masks(torch.zeros(2, 3, 5))


@functools.cache
def _reference(case):
    q, k, v, tm = _inputs(case)
    *_, cls_visible, mode = case
    return naive_paper_attention(q, k, v, tm, cls_visible, mode)


@pytest.mark.parametrize("case", CASES)
def test_torch_twin_matches_separate_passes(case):
    q, k, v, tm = _inputs(case)
    *_, cls_visible, mode = case
    ref = _reference(case)
    shared, packed_out, p = paper_attention(q, k, v, tm, cls_visible=cls_visible, mode=mode, backend="torch")
    assert packed_out.shape == (int(tm.sum()), q.shape[1], q.shape[3])
    assert rel_err(unpack_paper(shared, packed_out, p), ref) < 1e-4


def test_matches_dbaclip_per_mask_passes():
    """Against DBAClip's non-packed per-mask path (TUSSS_KERNELS=reference): the biased attention run once per mask
    as the ``paper`` preset defines it (bias −100, forced diagonal, mean)."""
    hook = functools.partial(masked_dual_attention, backend="torch")
    case = CASES[1]
    q, k, v, tm = _inputs(case)
    shared, out, p = paper_attention(q, k, v, tm, mode="mean", backend="torch")
    dense = unpack_paper(shared, out, p)
    for j in range(tm.shape[1]):
        ref = hook(q, k, v, tm[:, j:j + 1], bias_value=-100.0, mode="mean", force_diagonal=True)
        assert rel_err(dense[:, j], ref) < 1e-5


@pytest.fixture(scope="module")
def triton_outputs():
    jobs = []
    for case in CASES:
        q, k, v, tm = _inputs(case)
        *_, cls_visible, mode = case
        jobs.append({"fn": "packed", "args": [q, k, v, pack_token_masks(tm)],
                     "kwargs": {"cls_visible": cls_visible, "mode": mode}})
    return run_in_interpreter(jobs)


@pytest.mark.parametrize("i", range(len(CASES)))
def test_triton_interpreter_matches_separate_passes(triton_outputs, i):
    case = CASES[i]
    q, k, v, tm = _inputs(case)
    *_, cls_visible, mode = case
    ref = _reference(case)
    shared, _, p = paper_attention(q, k, v, tm, cls_visible=cls_visible, mode=mode, backend="torch")
    assert rel_err(unpack_paper(shared, triton_outputs[i], p), ref) < 1e-4
