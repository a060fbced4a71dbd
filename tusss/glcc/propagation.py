"""Transductive label propagation, Eq. 1: solve ``(I - alpha S) P* = P^c`` (reference §6.4).

The reference solves one class at a time with ``scipy.sparse.linalg.cg`` (tol 1e-6, maxiter 200, x0 = 0),
reading the sparse matrix K times per iteration. :func:`block_cg` runs the K conjugate-gradient recurrences
together: one SpMM on an (N, K_active) block per iteration, per-column step sizes, a per-column
convergence test ``||r_c|| <= tol * ||b_c||`` (scipy's criterion with atol 0) and converged columns frozen,
so every column follows exactly the iterates of its own scalar CG.

One implementation, two array backends: NumPy/SciPy (CPU) and CuPy/cupyx.scipy.sparse (GPU), picked by
``backend="auto"`` (CuPy when importable and a GPU is present). CuPy is imported lazily.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from tusss.errors import InputError
from tusss.validate import check_finite

__all__ = ["CGInfo", "block_cg", "propagate", "cupy_available"]


@dataclass
class CGInfo:
    """Convergence report of :func:`block_cg`.

    Attributes:
        iterations: (K,) int, iterations each column took (maxiter when not converged).
        converged: (K,) bool.
        rel_residual: (K,) float, final ``||b - A x|| / ||b||`` (0 for zero columns).
        spmm_calls: number of sparse products (one per iteration).
    """

    iterations: np.ndarray
    converged: np.ndarray
    rel_residual: np.ndarray
    spmm_calls: int


def cupy_available() -> bool:
    """True when CuPy imports and sees a CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _modules(backend: str):
    if backend == "auto":
        backend = "cupy" if cupy_available() else "numpy"
    if backend == "numpy":
        return np, sp, backend
    if backend == "cupy":
        try:
            import cupy
            import cupyx.scipy.sparse as csp
        except ImportError as e:  # pragma: no cover - depends on the machine
            raise InputError("backend='cupy' needs CuPy (pip install cupy-cuda12x)") from e
        return cupy, csp, backend
    raise InputError(f"backend must be 'auto', 'numpy' or 'cupy', got {backend!r}")


def block_cg(matvec, B, *, tol: float = 1e-6, maxiter: int = 200, xp=np, warn: bool = True):
    """Conjugate gradient on all columns of ``B`` at once (x0 = 0).

    Args:
        matvec: function (N, k) -> (N, k) applying the SPD operator A to a block of columns.
        B: (N, K) right-hand sides (``xp`` array).
        tol: relative residual tolerance per column.
        maxiter: maximum iterations.
        xp: numpy or cupy.

    Returns:
        X (N, K) solution, :class:`CGInfo`.
    """
    N, K = B.shape
    X = xp.zeros_like(B)
    R = B.copy()
    P = R.copy()
    bnorm = xp.sqrt((B * B).sum(0))
    rr = (R * R).sum(0)
    thresh = (tol * bnorm) ** 2
    active = xp.asarray(rr > thresh)  # zero columns (b = 0 -> x = 0) converge at once
    iters = np.zeros(K, np.int64)
    calls = 0
    for it in range(maxiter):
        act = np.flatnonzero(_to_numpy(active))
        if act.size == 0:
            break
        if act.size == K:
            Pa, Ra, Xa, rra = P, R, X, rr
        else:
            ai = xp.asarray(act)
            Pa, Ra, Xa, rra = P[:, ai], R[:, ai], X[:, ai], rr[ai]
        Q = matvec(Pa)
        calls += 1
        pq = (Pa * Q).sum(0)
        alpha = rra / pq
        Xa = Xa + Pa * alpha
        Ra = Ra - Q * alpha
        rr_new = (Ra * Ra).sum(0)
        beta = rr_new / rra
        Pa = Ra + Pa * beta
        if act.size == K:
            P, R, X, rr = Pa, Ra, Xa, rr_new
        else:
            P[:, ai], R[:, ai], X[:, ai], rr[ai] = Pa, Ra, Xa, rr_new
        iters[act] = it + 1
        active = rr > thresh
    res = _to_numpy(xp.sqrt(rr) / xp.where(bnorm > 0, bnorm, 1.0))
    conv = ~_to_numpy(active)
    if warn and not conv.all():
        warnings.warn(f"block CG: {int((~conv).sum())} of {K} columns did not converge in {maxiter} iterations "
                      f"(max relative residual {res.max():.2e} > tol {tol:g})", RuntimeWarning, stacklevel=2)
    return X, CGInfo(iterations=iters, converged=conv, rel_residual=res, spmm_calls=calls)


def _to_numpy(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def propagate(
    S: sp.spmatrix,
    Pc: np.ndarray,
    alpha: float = 0.9,
    *,
    tol: float = 1e-6,
    maxiter: int = 200,
    backend: str = "auto",
    clip_negative: bool = True,
    dtype: type = np.float64,
) -> tuple[np.ndarray, CGInfo]:
    """Solve Eq. 1 ``(I - alpha S) P* = P^c`` for all K columns with :func:`block_cg`.

    Args:
        S: (N, N) symmetric normalised affinity (scipy sparse; zero diagonal).
        Pc: (N, K) soft labels.
        alpha: propagation magnitude in [0, 1).
        tol, maxiter: CG settings (reference: 1e-6, 200).
        backend: "auto" | "numpy" | "cupy".
        clip_negative: clip negatives of P* to 0 (reference).
        dtype: computation dtype.

    Returns:
        P* (N, K) float32 NumPy array, :class:`CGInfo`.
    """
    if not 0.0 <= alpha < 1.0:
        raise InputError(f"alpha must be in [0, 1), got {alpha}")
    Pc = np.asarray(Pc)
    if Pc.ndim != 2 or Pc.shape[0] != S.shape[0] or S.shape[0] != S.shape[1]:
        raise InputError(f"Pc {Pc.shape} must be (N, K) with N = {S.shape[0]} rows of the graph")
    check_finite(Pc, "Pc")
    xp, xsp, name = _modules(backend)
    S = S.tocsr().astype(dtype, copy=False)
    if name == "cupy":
        Sd = xsp.csr_matrix(S)
        B = xp.asarray(Pc, dtype=dtype)
    else:
        Sd = S
        B = np.ascontiguousarray(Pc, dtype=dtype)

    def matvec(V):
        return V - alpha * (Sd @ V)

    X, info = block_cg(matvec, B, tol=tol, maxiter=maxiter, xp=xp)
    X = _to_numpy(X)
    if clip_negative:
        X = np.maximum(X, 0.0)
    return X.astype(np.float32), info
