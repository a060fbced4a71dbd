"""Inductive label propagation (paper Eq. 14-15, Appendix B; reference §6.5) and the probe combination.

For a test embedding e: a = raw cosine to its k̄ nearest training embeddings (no gamma, no clamping),

    ā_i = a_i / sqrt(0.5 · (k̄ / k) · d_i · ||a||_1)        (norm="rigorous", the reference's code)
    ā_i = a_i / sqrt(0.5 · d_i · Σ_j a_j)                    (norm="paper", Eq. 15)
    ā   = a / ||a||_1                                         (norm="L1", Table 8 ablation)

and bias = Σ_i ā_i P*_i (Eq. 14 without the prior). The combination (reference §6.5,
``LinearCombineClassifier``): p = s_probe + w · s_LP, classes where either weighted term < 1e-8 set to 0
(``score_suppress``), L1 over classes, background exponent, argmax. The paper's form p + α āᵀP* with
p = softmax(U e) is ``combine="paper"``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tusss.errors import InputError
from tusss.glcc.knn import knn_search

__all__ = ["normalize_affinity", "inductive_bias", "CombineConfig", "combine_scores", "alpha_bg"]

NORMS = ("rigorous", "paper", "L1", "none")


def normalize_affinity(a: np.ndarray, deg: np.ndarray, k_bar: int, k: int, norm: str = "rigorous") -> np.ndarray:
    """Eq. 15 weights.

    Args:
        a: (M, k̄) raw cosine similarities to the neighbours; deg: (M, k̄) their training degrees d_i.
        k_bar, k: neighbours at test time / in the training graph.
        norm: one of ``rigorous`` (reference), ``paper``, ``L1``, ``none``.

    Returns:
        (M, k̄) float64 ā.
    """
    a = np.asarray(a, dtype=np.float64)
    if norm == "rigorous":
        l1 = np.abs(a).sum(1, keepdims=True)
        den = np.sqrt(0.5 * (k_bar / k) * deg * l1)
    elif norm == "paper":
        den = np.sqrt(np.maximum(0.5 * deg * a.sum(1, keepdims=True), 0.0))
    elif norm == "L1":
        den = np.broadcast_to(np.abs(a).sum(1, keepdims=True), a.shape)
    elif norm == "none":
        return a
    else:
        raise InputError(f"norm must be one of {NORMS}, got {norm!r}")
    return np.divide(a, den, out=np.zeros_like(a), where=den > 0)


def inductive_bias(
    queries: np.ndarray,
    train_embeddings: np.ndarray,
    degree: np.ndarray,
    Pstar: np.ndarray,
    k_bar: int,
    k: int,
    *,
    norm: str = "rigorous",
    backend: str = "torch",
    index: object | None = None,
    **search_kw: object,
) -> np.ndarray:
    """āᵀP* for each query (Eq. 14 without the prior).

    Args:
        queries: (M, D) float32 L2-normalised test embeddings.
        train_embeddings: (N, D) float32 L2-normalised training embeddings.
        degree: (N,) training degrees (row sums of W + Wᵀ, zeros replaced by 1).
        Pstar: (N, K) smoothed labels.
        k_bar: neighbours at test time; k: neighbours of the training graph.
        norm: see :func:`normalize_affinity`.
        backend, index, search_kw: passed to :func:`tusss.glcc.knn.knn_search`.

    Returns:
        (M, K) float32.
    """
    N = train_embeddings.shape[0]
    if degree.shape != (N,) or Pstar.shape[0] != N:
        raise InputError(f"degree {degree.shape} and P* {Pstar.shape} must have N = {N} rows")
    k_bar = min(k_bar, N)
    if queries.shape[0] == 0:
        return np.zeros((0, Pstar.shape[1]), np.float32)
    sims, idx = knn_search(queries, train_embeddings, k_bar, backend=backend, index=index, **search_kw)
    valid = idx >= 0
    idx_c = np.where(valid, idx, 0)
    a = np.where(valid, sims, 0.0)
    abar = normalize_affinity(a, degree[idx_c], k_bar, k, norm)
    abar = np.where(valid, abar, 0.0)
    return np.einsum("mj,mjk->mk", abar, np.asarray(Pstar[idx_c], dtype=np.float64)).astype(np.float32)


def alpha_bg(s: np.ndarray, alpha: float) -> np.ndarray:
    """Raise column 0 (background) to ``alpha`` (reference ``bg_method={'method': 'alpha_bg'}``)."""
    if alpha == 1.0:
        return s
    s = np.array(s, dtype=np.float64, copy=True)
    s[:, 0] = np.maximum(s[:, 0], 0.0) ** alpha
    return s


def _l1(s: np.ndarray) -> np.ndarray:
    return s / np.maximum(np.abs(s).sum(1, keepdims=True), 1e-12)


@dataclass
class CombineConfig:
    """How the probe and inductive-LP scores are combined (reference §6.5).

    Attributes:
        mode: "reference" (p = s_probe + w·s_LP with score suppression, L1, bg^α₃) or "paper"
            (p = softmax(U e) + w · āᵀP*; use w = 0.9 and norm="paper" for the paper's Eq. 14).
        w: weight of the inductive term (reference test values: 2.0 full, 1.5 weak).
        lp_l1: L1-normalise the inductive scores before weighting (reference: weak True, full False).
        alpha_probe, alpha_lp, alpha_final: background exponents α₁, α₂, α₃ (ignored without a bg class).
        score_suppress: zero the classes where either weighted term is < 1e-8.
    """

    mode: str = "reference"
    w: float = 1.5
    lp_l1: bool = True
    alpha_probe: float = 1.0
    alpha_lp: float = 1.0
    alpha_final: float = 1.0
    score_suppress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def combine_scores(s_probe: np.ndarray, bias: np.ndarray, cfg: CombineConfig, has_bg: bool = True) -> np.ndarray:
    """Final GLCC scores from the probe's softmax scores and the inductive bias.

    Args:
        s_probe: (M, K) softmax(100·cos) probe scores.
        bias: (M, K) āᵀP*.
        cfg: :class:`CombineConfig`.
        has_bg: class 0 is background (the α exponents apply to it).

    Returns:
        (M, K) float32 scores (argmax = label).
    """
    if s_probe.shape != bias.shape:
        raise InputError(f"probe scores {s_probe.shape} and inductive scores {bias.shape} differ")
    if cfg.mode == "paper":
        return (s_probe + cfg.w * bias).astype(np.float32)
    if cfg.mode != "reference":
        raise InputError(f"combine mode must be 'reference' or 'paper', got {cfg.mode!r}")
    p1 = np.asarray(s_probe, dtype=np.float64)
    p2 = np.asarray(bias, dtype=np.float64)
    if cfg.lp_l1:
        p2 = _l1(p2)
    if has_bg:
        p1 = alpha_bg(p1, cfg.alpha_probe)
        p2 = alpha_bg(p2, cfg.alpha_lp)
    t1, t2 = p1, cfg.w * p2
    p = t1 + t2
    if cfg.score_suppress:
        p = np.where((t1 < 1e-8) | (t2 < 1e-8), 0.0, p)
    p = _l1(p)
    if has_bg:
        p = alpha_bg(p, cfg.alpha_final)
    return p.astype(np.float32)
