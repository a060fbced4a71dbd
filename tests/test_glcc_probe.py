"""Linear probe: schedule equals torch's LinearLR + CosineAnnealingLR, one SGD step equals a hand-written
step of the reference loss, determinism, and learning on separable data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tusss.errors import InputError
from tusss.glcc.probe import ProbeConfig, _lr_at, train_probe


def test_schedule_matches_torch_schedulers():
    cfg = ProbeConfig(iters=50, warmup_iters=10)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=cfg.warmup_start_lr / cfg.lr, total_iters=10)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=40, eta_min=0)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[10])
    ref = []
    for _ in range(50):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose([_lr_at(i, cfg, 10) for i in range(50)], ref, rtol=1e-6, atol=1e-12)


def test_one_step_equals_reference_loss():
    rng = np.random.default_rng(0)
    N, D, K = 16, 8, 3
    X = rng.normal(size=(N, D)).astype(np.float32)
    T = rng.random((N, K)).astype(np.float32)
    T /= T.sum(1, keepdims=True)
    A = rng.integers(1, 50, N).astype(np.float32)
    cfg = ProbeConfig(iters=1, warmup_iters=0, batch_size=N, seed=3)
    probe = train_probe(X, T, A, cfg, device="cpu")
    # reference: kaiming-uniform init from the same seeded generator, first batch = randperm (full batch)
    g = torch.Generator().manual_seed(3)
    b = 1 / np.sqrt(D)
    W = (torch.rand(K, D, generator=g) * 2 * b - b).requires_grad_(True)
    Xt, Tt, At = map(torch.from_numpy, (X, T, A))
    logits = 100 * torch.nn.functional.normalize(Xt, dim=1) @ torch.nn.functional.normalize(W, dim=1).T
    ce = torch.nn.functional.cross_entropy(logits, Tt, reduction="none")  # PyTorch soft-label CE
    loss = (At / (At.sum() + 1e-3) * ce).sum()
    loss.backward()
    expected = W.detach() - cfg.lr * W.grad  # SGD first step (momentum buffer = grad), lr at iter 0 = 0.02
    np.testing.assert_allclose(probe.weight.numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)


def test_deterministic_and_learns():
    rng = np.random.default_rng(1)
    C = np.eye(4, 16) * 3
    y = rng.integers(0, 4, 600)
    X = (C[y] + 0.5 * rng.normal(size=(600, 16))).astype(np.float32)
    T = np.eye(4, dtype=np.float32)[y]
    cfg = ProbeConfig(iters=200, batch_size=64)
    p1 = train_probe(X, T, None, cfg, device="cpu")
    p2 = train_probe(X, T, None, cfg, device="cpu")
    np.testing.assert_array_equal(p1.weight.numpy(), p2.weight.numpy())
    assert (p1.scores(X).argmax(1) == y).mean() > 0.95
    s = p1.scores(X[:5])
    np.testing.assert_allclose(s.sum(1), 1, rtol=1e-5)
    with pytest.raises(InputError):
        p1.scores(np.zeros((2, 15), np.float32))


def test_bad_inputs():
    X = np.zeros((4, 3), np.float32)
    with pytest.raises(InputError):
        train_probe(X, np.zeros((5, 2)), None)
    with pytest.raises(InputError, match="NaN"):
        train_probe(np.full((4, 3), np.nan, np.float32), np.zeros((4, 2)), None)
    with pytest.raises(InputError):
        train_probe(np.ones((4, 3), np.float32), -np.ones((4, 2)), None)
    with pytest.raises(InputError):
        train_probe(np.ones((4, 3), np.float32), np.ones((4, 2)), np.ones(3))
