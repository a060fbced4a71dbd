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


def _naive_two_stream_epoch(lab: np.ndarray, g: torch.Generator) -> list[int]:
    """The reference's SemiBalanceSampler semantics written out: a random order of the unlabelled rows and
    one of the labelled rows (repeated in new random orders to the same length), interleaved u, l, u, l."""
    ui = [int(i) for i in np.flatnonzero(~lab)]
    li = [int(i) for i in np.flatnonzero(lab)]
    n = max(len(ui), len(li))
    streams = []
    for idx in (ui, li):
        s: list[int] = []
        while len(s) < n:
            s += [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        streams.append(s[:n])
    out = []
    for a, b in zip(*streams):
        out += [a, b]
    return out


def test_semi_balance_order_interleaves_and_repeats_labelled():
    lab = np.zeros(11, bool)
    lab[[2, 7, 9]] = True  # 3 labelled, 8 unlabelled
    from tusss.glcc.probe import semi_balance_order

    order = semi_balance_order(lab, torch.Generator().manual_seed(5)).tolist()
    assert order == _naive_two_stream_epoch(lab, torch.Generator().manual_seed(5))
    assert len(order) == 16
    assert all(lab[i] for i in order[1::2]) and not any(lab[i] for i in order[0::2])
    assert sorted(order[0::2]) == np.flatnonzero(~lab).tolist()  # every unlabelled row once per epoch
    assert sorted(order[1:6:2]) == [2, 7, 9]  # labelled rows repeated as whole permutations


def test_semi_balance_sampler_trains_on_the_two_stream_batches():
    """Two iterations with the semi_balance sampler equal a hand-written loop over the two-stream order."""
    rng = np.random.default_rng(3)
    N, D, K, bs = 10, 6, 3, 4
    X = rng.normal(size=(N, D)).astype(np.float32)
    T = np.eye(K, dtype=np.float32)[rng.integers(0, K, N)]
    A = rng.integers(1, 30, N).astype(np.float32)
    lab = np.zeros(N, bool)
    lab[[0, 4]] = True
    cfg = ProbeConfig(iters=2, warmup_iters=0, batch_size=bs, seed=11, sampler="semi_balance")
    probe = train_probe(X, T, A, cfg, device="cpu", labeled=lab)

    g = torch.Generator().manual_seed(11)
    b = 1 / np.sqrt(D)
    W = (torch.rand(K, D, generator=g) * 2 * b - b).requires_grad_(True)
    opt = torch.optim.SGD([W], lr=cfg.lr, momentum=0.9)
    order = _naive_two_stream_epoch(lab, g)
    Xn = torch.nn.functional.normalize(torch.from_numpy(X), dim=1)
    for it in range(2):
        idx = torch.tensor(order[it * bs:(it + 1) * bs])
        for group in opt.param_groups:
            group["lr"] = 0.5 * cfg.lr * (1 + np.cos(np.pi * it / 2))
        logits = 100 * Xn[idx] @ torch.nn.functional.normalize(W, dim=1).T
        ce = torch.nn.functional.cross_entropy(logits, torch.from_numpy(T)[idx], reduction="none")
        a = torch.from_numpy(A)[idx]
        loss = (a / (a.sum() + 1e-3) * ce).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    np.testing.assert_allclose(probe.weight.numpy(), W.detach().numpy(), rtol=1e-5, atol=1e-7)
    # the random sampler draws other batches: a different probe
    rnd = train_probe(X, T, A, ProbeConfig(iters=2, warmup_iters=0, batch_size=bs, seed=11), device="cpu")
    assert not np.allclose(rnd.weight.numpy(), probe.weight.numpy())
    with pytest.raises(InputError, match="labeled"):
        train_probe(X, T, A, cfg, device="cpu")
    with pytest.raises(InputError, match="sampler"):
        ProbeConfig(sampler="two-stream")


def test_normalized_rows_are_used_in_place(monkeypatch):
    """normalized=True: no normalised (N, D) copy of the features (counted), the same probe up to float32
    rounding as normalising again, and rows that are not unit-norm are refused."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 16)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    T = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 300)]
    cfg = ProbeConfig(iters=30, batch_size=32)
    real = torch.nn.functional.normalize
    full = []
    monkeypatch.setattr(torch.nn.functional, "normalize",
                        lambda t, *a, **k: (full.append(1) if t.shape[0] == 300 else None) or real(t, *a, **k))
    p_copy = train_probe(X, T, None, cfg, device="cpu")
    assert len(full) == 1
    p_in_place = train_probe(X, T, None, cfg, device="cpu", normalized=True)
    assert len(full) == 1  # no second (N, D) normalisation
    np.testing.assert_allclose(p_in_place.weight.numpy(), p_copy.weight.numpy(), rtol=1e-4, atol=1e-6)
    with pytest.raises(InputError, match="unit-norm"):
        train_probe(2 * X, T, None, cfg, device="cpu", normalized=True)
