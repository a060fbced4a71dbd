"""Linear probe on mask embeddings (paper §4.2, docs/reference-code.md §6.3).

Cosine classifier ``logits = 100 · cos(e, U_k)`` without bias (U initialised like ``nn.Linear``, seeded),
area-weighted soft cross-entropy ``sum_i w_i CE(logits_i, t_i)`` with ``w_i = area_i / (sum_batch area + 1e-3)``,
SGD (momentum 0.9, lr 0.02, weight decay 0), batch 512 drawn from a random permutation per epoch with
drop_last, LinearLR warm-up from 1e-5 then cosine annealing to 0, fp32.

The embeddings stay resident as one tensor and batches are index gathers (no per-item Python Dataset).

Sampling: ``sampler="random"`` (the reference's random sampler, "单流") or ``"semi_balance"`` (the
reference's two-stream ``SemiBalanceSampler`` of the COCO-Object semi probe, "双流"): each epoch interleaves
one unlabelled and one labelled mask index, ``u0 l0 u1 l1 ...``, both streams in a fresh random order, the
shorter (normally the labelled one) repeated in new random orders until it matches the longer.

Iterations: the reference trains 60k-720k iterations (VOC base 60k / iter_factor, COCO-Obj 180k / factor,
grid-searched). The default here, 10,000 iterations with a 1,000-iteration warm-up (the reference's 10 %
ratio), is a CPU-friendly budget (~15 epochs over VOC's 325k masks); set ``iters`` to the reference's
count for a faithful run. The recipes (:mod:`tusss.recipes`) carry the authors' counts per experiment and
per round (e.g. VOC WSSS 240k per round; COCO-Object 720k with a fixed 18k warm-up; COCO-2014 480k then 240k
with a fixed 12k warm-up) and pass them as ``GLCCConfig.probe_rounds``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from tusss.errors import InputError
from tusss.validate import check_finite

__all__ = ["ProbeConfig", "LinearProbe", "train_probe", "semi_balance_order", "SAMPLERS"]

SAMPLERS = ("random", "semi_balance")


@dataclass
class ProbeConfig:
    """Training settings (docs/reference-code.md §6.3 defaults except ``iters``; see module docstring)."""

    iters: int = 10_000
    warmup_iters: int | None = None  # None -> iters // 10
    lr: float = 0.02
    warmup_start_lr: float = 1e-5
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 512
    scale: float = 100.0
    seed: int = 0
    cpu_threads: int | None = 1  # torch threads while training on CPU (tiny matmuls: 1 avoids spin-waits)
    sampler: str = "random"  # "random" | "semi_balance" (module docstring)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise InputError(f"probe sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.iters < 0 or (self.warmup_iters is not None and not 0 <= self.warmup_iters <= max(self.iters, 0)):
            raise InputError(f"probe iters ({self.iters}) must be >= 0 and warmup_iters ({self.warmup_iters}) "
                             "in [0, iters]")

    def to_dict(self) -> dict:
        return asdict(self)


class LinearProbe:
    """Cosine classifier ``scale · cos(e, U_k)``, U of shape (K, D)."""

    def __init__(self, weight: np.ndarray | torch.Tensor, scale: float = 100.0) -> None:
        w = torch.as_tensor(np.asarray(weight, dtype=np.float32) if not torch.is_tensor(weight) else weight)
        if w.ndim != 2:
            raise InputError(f"probe weight must be (K, D), got {tuple(w.shape)}")
        self.weight = w.detach().float().cpu().contiguous()
        self.scale = float(scale)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def logits(self, X: np.ndarray | torch.Tensor) -> np.ndarray:
        """(M, D) embeddings -> (M, K) float32 ``scale · cos``."""
        x = torch.as_tensor(np.asarray(X, dtype=np.float32)) if not torch.is_tensor(X) else X.float()
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InputError(f"embeddings must be (M, {self.dim}), got {tuple(x.shape)}")
        with torch.inference_mode():
            out = self.scale * torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(
                self.weight, dim=1).T
        return out.numpy()

    def scores(self, X: np.ndarray | torch.Tensor) -> np.ndarray:
        """(M, D) -> (M, K) float32 ``softmax(scale · cos)`` over all K classes."""
        z = torch.from_numpy(self.logits(X))
        return torch.softmax(z, dim=1).numpy()


def _lr_at(it: int, cfg: ProbeConfig, warm: int) -> float:
    """LinearLR(start_factor=warmup_start_lr/lr, total_iters=warm) then CosineAnnealingLR(T_max=iters-warm)."""
    if it < warm:
        f0 = cfg.warmup_start_lr / cfg.lr
        return cfg.lr * (f0 + (1.0 - f0) * it / warm)
    T = max(cfg.iters - warm, 1)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * (it - warm) / T))


def train_probe(
    X: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor,
    areas: np.ndarray | torch.Tensor | None = None,
    cfg: ProbeConfig | None = None,
    *,
    device: str | None = None,
    sample_weight: np.ndarray | None = None,
    progress: bool = False,
    labeled: np.ndarray | None = None,
    normalized: bool = False,
) -> LinearProbe:
    """Train the cosine linear probe.

    Args:
        X: (N, D) float embeddings (normalised inside the classifier).
        targets: (N, K) float soft targets (rows are distributions, or all-zero = no supervision: such rows
            contribute zero loss, as with PyTorch's soft-label cross-entropy).
        areas: (N,) mask areas for the area weighting (None -> equal weights).
        cfg: :class:`ProbeConfig`.
        device: torch device (default CUDA when available).
        labeled: (N,) bool, which rows are labelled: needed by ``cfg.sampler == "semi_balance"`` (ignored by
            the random sampler).
        normalized: the rows of ``X`` already have unit L2 norm (e.g. :class:`tusss.glcc.model.GLCC`'s
            ``X_``): they are used in place instead of through a normalised (N, D) float32 copy (the copy
            was 750 MB of a 2.4 GB ``tusss fit`` at 325k x 512; checked on a sample of rows).

    Returns:
        :class:`LinearProbe` on CPU.
    """
    cfg = cfg or ProbeConfig()
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float32)) if not torch.is_tensor(X) else X.float()
    T = torch.as_tensor(np.asarray(targets, dtype=np.float32)) if not torch.is_tensor(targets) else targets.float()
    if Xt.ndim != 2 or T.ndim != 2 or Xt.shape[0] != T.shape[0]:
        raise InputError(f"embeddings {tuple(Xt.shape)} and targets {tuple(T.shape)} must be (N, D) and (N, K)")
    N, D = Xt.shape
    K = T.shape[1]
    if N == 0:
        raise InputError("cannot train the probe on 0 embeddings")
    check_finite(Xt.numpy() if Xt.device.type == "cpu" else Xt.cpu().numpy(), "embeddings")
    check_finite(T.cpu().numpy(), "targets")
    if float(T.min()) < 0:
        raise InputError("targets must be non-negative (soft labels)")
    A = torch.ones(N) if areas is None else torch.as_tensor(np.asarray(areas, dtype=np.float32))
    if A.shape != (N,) or float(A.min()) < 0:
        raise InputError(f"areas must be (N,) = ({N},) non-negative, got {tuple(A.shape)}")
    if sample_weight is not None:
        A = A * torch.as_tensor(np.asarray(sample_weight, dtype=np.float32))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if normalized:
        sample = Xt[:: max(1, N // 1000)].double().norm(dim=1)
        if not bool(((sample - 1).abs() < 1e-3).all()):
            raise InputError("train_probe(normalized=True) needs unit-norm rows, found norms "
                             f"{float(sample.min()):.4g} to {float(sample.max()):.4g}")
    Xt, T, A = Xt.to(dev), T.to(dev), A.to(dev)
    Xn = Xt if normalized else torch.nn.functional.normalize(Xt, dim=1)
    lab = None
    if cfg.sampler == "semi_balance":
        if labeled is None:
            raise InputError("the semi_balance sampler needs labeled= (which rows are labelled)")
        lab = np.asarray(labeled, bool)
        if lab.shape != (N,):
            raise InputError(f"labeled must be ({N},) bool, got {lab.shape}")
        if lab.all() or not lab.any():
            raise InputError("the semi_balance sampler needs both labelled and unlabelled rows")

    g = torch.Generator().manual_seed(cfg.seed)
    bound = 1.0 / math.sqrt(D)  # nn.Linear's default init (kaiming_uniform a=sqrt(5)), seeded generator
    W = (torch.rand(K, D, generator=g) * 2 * bound - bound).to(dev).requires_grad_(True)
    opt = torch.optim.SGD([W], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    bs = min(cfg.batch_size, N)  # drop_last with N < batch would give no batch at all
    n_batches = N // bs
    warm = cfg.iters // 10 if cfg.warmup_iters is None else cfg.warmup_iters
    old_threads = torch.get_num_threads()
    if dev.type == "cpu" and cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        return _train_loop(Xn, T, A, W, opt, g, cfg, warm, bs, n_batches, N, dev, progress, lab)
    finally:
        torch.set_num_threads(old_threads)


def semi_balance_order(labeled: np.ndarray, g: torch.Generator) -> torch.Tensor:
    """One epoch of the two-stream sampler: (2 n,) int64 indices ``u0 l0 u1 l1 ...`` with n = max(U, L);
    each stream is a random permutation of its rows (from ``g``), the shorter one continued by further
    random permutations of itself and cut at n."""
    lab = np.asarray(labeled, bool)
    li, ui = torch.from_numpy(np.flatnonzero(lab)), torch.from_numpy(np.flatnonzero(~lab))
    n = max(len(li), len(ui))

    def stream(idx: torch.Tensor) -> torch.Tensor:
        reps = -(-n // len(idx))
        return torch.cat([idx[torch.randperm(len(idx), generator=g)] for _ in range(reps)])[:n]

    u, lb = stream(ui), stream(li)
    return torch.stack([u, lb], 1).reshape(-1)


def _train_loop(Xn, T, A, W, opt, g, cfg: ProbeConfig, warm: int, bs: int, n_batches: int, N: int, dev,
                progress: bool, labeled: np.ndarray | None = None) -> LinearProbe:
    if labeled is not None:  # two-stream epochs are 2 max(U, L) long
        n_batches = (2 * max(int(labeled.sum()), int((~labeled).sum()))) // bs
    it = 0
    perm = None
    pos = n_batches
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.iters, desc="linear probe", unit="it")
    while it < cfg.iters:
        if pos >= n_batches:
            perm = (torch.randperm(N, generator=g) if labeled is None else semi_balance_order(labeled, g)).to(dev)
            pos = 0
        idx = perm[pos * bs:(pos + 1) * bs]
        pos += 1
        for group in opt.param_groups:
            group["lr"] = _lr_at(it, cfg, warm)
        logits = cfg.scale * Xn[idx] @ torch.nn.functional.normalize(W, dim=1).T
        ce = -(T[idx] * torch.log_softmax(logits, dim=1)).sum(1)
        a = A[idx]
        w = a / (a.sum() + 1e-3)
        loss = (w * ce).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        it += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return LinearProbe(W.detach().cpu(), scale=cfg.scale)
