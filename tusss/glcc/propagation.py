"""Transductive label propagation, Eq. 1: solve ``(I - alpha S) P* = P^c`` (docs/reference-code.md §6.4).

The reference solves one class at a time with ``scipy.sparse.linalg.cg`` (tol 1e-6, maxiter 200, x0 = 0),
reading the sparse matrix K times per iteration. Here the K conjugate-gradient recurrences run together:
one sparse-times-dense product (SpMM) on an (N, K_active) block per iteration, per-column step sizes, a
per-column convergence test ``||r_c|| <= tol * ||b_c||`` (scipy's criterion with atol 0) and converged
columns frozen, so every column follows the iterates of its own scalar CG.

Backends (``propagate(backend=...)``):

- ``"torch"`` (the default through ``"auto"``): float32 CSR tensor with int32 indices and
  ``torch.addmm`` (MKL on the CPU, cuSPARSE on CUDA), the block compacted whenever columns converge
  (:func:`block_cg_torch`), and on the CPU a reverse Cuthill-McKee reordering of the graph for locality of
  the SpMM's gathers (:func:`rcm_permutation`, then :func:`permute_symmetric`, block by block in threads).
  The same code runs on CPU and CUDA tensors (``device=``). Float32 throughout; the
  result agrees with the float64 per-class solve to ~1e-6 of max |P*| (tests ask for 1e-4).
- ``"numpy"``: float64 SciPy CSR and :func:`block_cg` (the exact reference arithmetic, kept as the oracle).
- ``"cupy"``: :func:`block_cg` on CuPy / cupyx.scipy.sparse arrays (float64), imported lazily.

``backend="auto"`` is ``"torch"`` on CUDA when torch sees a GPU, else on the CPU. The reordered, converted
graph (:class:`LPOperator`, :func:`prepare_operator`) is cached on a :class:`tusss.glcc.knn.KnnGraph`, so a
second solve on the same graph (the next bootstrap round, a grid over alpha) starts at the solve.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from tusss.errors import InputError
from tusss.validate import check_finite

__all__ = ["CGInfo", "BACKENDS", "block_cg", "block_cg_torch", "propagate", "cupy_available", "rcm_permutation",
           "permute_symmetric", "torch_csr", "propagate_torch", "LPOperator", "prepare_operator"]

BACKENDS = ("auto", "torch", "numpy", "cupy")


@dataclass
class CGInfo:
    """Convergence report of :func:`block_cg`.

    Attributes:
        iterations: (K,) int, iterations each column took (maxiter when not converged).
        converged: (K,) bool.
        rel_residual: (K,) float, final ``||b - A x|| / ||b||`` (0 for zero columns).
        spmm_calls: number of sparse products (one per iteration).
        spmm_columns: total columns multiplied over all SpMMs (< K * spmm_calls when columns were frozen).
        backend: the backend that ran ("numpy", "cupy", "torch:cpu", "torch:cuda", ...).
        seconds: wall time of each phase (``prepare``: reordering / conversion / upload, ``solve``).
    """

    iterations: np.ndarray
    converged: np.ndarray
    rel_residual: np.ndarray
    spmm_calls: int
    spmm_columns: int = 0
    backend: str = "numpy"
    seconds: dict | None = None


def cupy_available() -> bool:
    """True when CuPy imports and sees a CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _modules(backend: str):
    if backend == "numpy":
        return np, sp, backend
    if backend == "cupy":
        try:
            import cupy
            import cupyx.scipy.sparse as csp
        except ImportError as e:  # pragma: no cover - depends on the machine
            raise InputError("backend='cupy' needs CuPy (pip install cupy-cuda12x)") from e
        return cupy, csp, backend
    raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")


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
    calls = cols = 0
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
        cols += act.size
        active = rr > thresh
    res = _to_numpy(xp.sqrt(rr) / xp.where(bnorm > 0, bnorm, 1.0))
    conv = ~_to_numpy(active)
    _warn_unconverged(warn, conv, res, maxiter, tol)
    return X, CGInfo(iterations=iters, converged=conv, rel_residual=res, spmm_calls=calls, spmm_columns=cols,
                     backend="cupy" if xp is not np else "numpy")


def _warn_unconverged(warn: bool, conv: np.ndarray, res: np.ndarray, maxiter: int, tol: float) -> None:
    if warn and not conv.all():
        warnings.warn(f"block CG: {int((~conv).sum())} of {conv.size} columns did not converge in {maxiter} "
                      f"iterations (max relative residual {res.max():.2e} > tol {tol:g})", RuntimeWarning,
                      stacklevel=3)


def block_cg_torch(matvec, B, *, tol: float = 1e-6, maxiter: int = 200, warn: bool = True,
                   row_chunk: int | None = None, overwrite_b: bool = False):
    """:func:`block_cg` on torch tensors (CPU or CUDA), with the block compacted as columns converge.

    Each iteration is one ``matvec`` on the (N, K_active) block of still-active search directions plus
    in-place column updates; when columns meet ``||r_c|| <= tol ||b_c||`` their solution is written out
    and they leave the block, so later SpMMs are narrower. Column c's iterates are those of scalar CG on
    b_c (same recurrences, per-column alpha / beta); the per-iteration convergence test reads K floats to
    the host (one small device sync per iteration on CUDA).

    Args:
        matvec: function (N, k) tensor -> (N, k) tensor applying the SPD operator A (its result is used
            before the next call, so it may reuse one output buffer).
        B: (N, K) float tensor of right-hand sides.
        tol: relative residual tolerance per column; maxiter: maximum iterations.
        row_chunk: the vector updates run over row blocks of this many rows, so that their temporaries stay
            in cache (default 8192 on the CPU, all rows on CUDA); the arithmetic is the same.
        overwrite_b: B's storage may be used as the residual block (saves one (N, K) copy; B is
            overwritten).

    Returns:
        X (N, K) tensor (B's dtype and device), :class:`CGInfo`.
    """
    import torch

    N, K = B.shape
    ch = int(row_chunk or (8192 if B.device.type == "cpu" else max(N, 1)))
    spans = [(a, min(N, a + ch)) for a in range(0, N, ch)]

    def coldot(U, V):  # (N, k) x (N, k) -> (k,) column dot products, block by block
        acc = torch.zeros(U.shape[1], dtype=U.dtype, device=U.device)
        for a, b in spans:
            acc += (U[a:b] * V[a:b]).sum(0)
        return acc

    Xout = None  # made when the first columns leave the block (or for columns that never enter it)

    def finish(cols: np.ndarray, vals) -> None:  # columns ``cols`` of the result are ``vals``
        nonlocal Xout
        if Xout is None and cols.size == K:  # every column at once, in order: the block is the result
            Xout = vals
            return
        if Xout is None:
            Xout = _zeros_like(B)
        Xout.index_copy_(1, _index(cols, B.device), vals)

    bnorm2 = coldot(B, B)
    bnorm2_h = bnorm2.double().cpu().numpy()
    thresh = (tol * tol) * bnorm2_h
    rr_final = bnorm2_h.copy()  # per-column final ||r||^2 (zero columns: 0 = converged at once)
    iters = np.zeros(K, np.int64)
    act = np.flatnonzero(bnorm2_h > thresh)
    calls = cols = 0
    if act.size:
        sel = None if act.size == K else _index(act, B.device)
        R = (B if overwrite_b else B.clone()) if sel is None else B.index_select(1, sel)
        P = R.clone()
        X = _zeros_like(R)
        rr = bnorm2.clone() if sel is None else bnorm2.index_select(0, sel)
        for it in range(maxiter):
            Q = matvec(P)
            calls += 1
            cols += act.size
            a = rr / coldot(P, Q)
            rr_new = torch.zeros_like(rr)
            for lo, hi in spans:  # r -= a q and ||r||^2: one pass over each row block
                Rb = R[lo:hi].addcmul_(Q[lo:hi], a, value=-1.0)
                rr_new += (Rb * Rb).sum(0)
            beta = rr_new / rr
            for lo, hi in spans:  # x += a p with the old p, then p = r + beta p: one pass
                Pb = P[lo:hi]
                X[lo:hi].addcmul_(Pb, a)
                Pb.mul_(beta).add_(R[lo:hi])
            rr = rr_new
            iters[act] = it + 1
            rr_h = rr.double().cpu().numpy()
            rr_final[act] = rr_h
            done = rr_h <= thresh[act]
            if done.any():
                finish(act[done], X if done.all() else X.index_select(1, _index(np.flatnonzero(done), B.device)))
                keep = ~done
                act = act[keep]
                if act.size == 0:
                    break
                k = _index(np.flatnonzero(keep), B.device)
                X, R, P, rr = X.index_select(1, k), R.index_select(1, k), P.index_select(1, k), rr.index_select(0, k)
        if act.size:  # not converged within maxiter: return the last iterate
            finish(act, X)
    if Xout is None:  # every column was zero
        Xout = _zeros_like(B)
    conv = rr_final <= thresh
    res = np.sqrt(rr_final) / np.where(bnorm2_h > 0, np.sqrt(bnorm2_h), 1.0)
    _warn_unconverged(warn, conv, res, maxiter, tol)
    return Xout, CGInfo(iterations=iters, converged=conv, rel_residual=res, spmm_calls=calls, spmm_columns=cols,
                        backend=f"torch:{B.device.type}")


def _zeros_like(t):
    import torch

    return torch.zeros_like(t, memory_format=torch.contiguous_format)


def _index(a: np.ndarray, device):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)


def _to_numpy(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def rcm_permutation(S: sp.spmatrix, max_degree: int | None = 4) -> np.ndarray:
    """Reverse Cuthill-McKee order of a symmetric sparse matrix: (N,) int permutation ``p`` such that
    ``S[p][:, p]`` has a narrow band (neighbours close in memory, so the SpMM's gathers hit the cache).

    ``max_degree``: order by the symmetrised sub-graph of at most this many entries per row (about 4x cheaper
    than the whole kNN graph, and the same SpMM speed on kNN graphs: measured 57 vs 58 ms at 325k, k 50);
    None uses every entry. Any permutation gives the same solution; this only affects speed."""
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    S = sp.csr_matrix(S)
    if max_degree is not None and S.nnz > max_degree * S.shape[0]:
        lens = np.minimum(np.diff(S.indptr), max_degree)
        ip = np.zeros(S.shape[0] + 1, np.int64)
        np.cumsum(lens, out=ip[1:])
        pos = np.arange(ip[-1]) + np.repeat(S.indptr[:-1].astype(np.int64) - ip[:-1], lens)
        M = sp.csr_matrix((np.ones(ip[-1], np.float32), S.indices[pos], ip), shape=S.shape)
        S = (M + M.T).tocsr()
    return np.asarray(reverse_cuthill_mckee(S, symmetric_mode=True), dtype=np.int64)


def permute_symmetric(S: sp.csr_matrix, perm: np.ndarray, dtype=None, rows_per_block: int = 16384,
                      workers: int | None = None) -> sp.csr_matrix:
    """``S[perm][:, perm]`` for a CSR matrix: SciPy's row gather, then one relabelling of the column indices
    (no column fancy indexing; rows keep their entries' order, so column indices need not be sorted).

    Args:
        S: (N, N) sparse matrix; perm: (N,) permutation (row i of the result is row ``perm[i]`` of S).
        dtype: value dtype of the result (e.g. np.float32: half the bytes to move); default S's.
        rows_per_block: rows gathered per SciPy call.
        workers: threads filling blocks at once (SciPy's gather and NumPy's copies release the GIL; default
            torch's intra-op thread count, at most 4).

    The result's two nnz-long arrays are allocated once and filled block by block, so the only large fresh
    allocation is the result itself (no whole-matrix float32 copy or relabelled-index temporary). They are
    torch allocations viewed as NumPy arrays: on a VM whose host reclaims freed memory, NumPy's huge-page
    allocations were several times slower to fill on first touch after a pause (``benchmarks/bench_lp_permute.py``,
    325k x 50: whole-matrix NumPy steps 0.085 s warm / 0.52 s after a pause; this function 0.072 / 0.098 s with
    two threads)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    S = sp.csr_matrix(S)
    n = S.shape[0]
    perm = np.asarray(perm, dtype=np.int64)
    if perm.shape != (n,):
        raise InputError(f"perm {perm.shape} must be ({n},)")
    it = np.int32 if n < 2**31 and S.nnz < 2**31 else np.int64
    vt = np.dtype(dtype or S.dtype)
    inv = np.empty(n, it)
    inv[perm] = np.arange(n, dtype=it)
    indptr = np.zeros(n + 1, it)
    np.cumsum(np.diff(S.indptr)[perm], out=indptr[1:])
    nnz = int(indptr[-1])
    indices, data = _host_array(nnz, it), _host_array(nnz, vt)

    def fill(a: int) -> None:
        b = min(n, a + rows_per_block)
        lo, hi = int(indptr[a]), int(indptr[b])
        block = S[perm[a:b]]  # SciPy's row gather (C++), a few MB
        data[lo:hi] = block.data  # cast on the copy
        indices[lo:hi] = inv[block.indices]

    starts = range(0, n, max(1, int(rows_per_block)))
    workers = max(1, min(4, int(workers or torch.get_num_threads()), len(starts)))
    if workers == 1:
        for a in starts:
            fill(a)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(fill, starts))  # list(): re-raises a block's error here
    T = sp.csr_matrix((data, indices, indptr), shape=S.shape, copy=False)
    T.has_sorted_indices = False
    return T


def _host_array(n: int, dtype) -> np.ndarray:
    """An uninitialised (n,) NumPy array in memory allocated by torch (no transparent-huge-page request: see
    :func:`permute_symmetric`)."""
    import torch

    return torch.empty(n, dtype=torch.from_numpy(np.empty(0, dtype)).dtype).numpy()


def torch_csr(S: sp.spmatrix, device=None, dtype=None):
    """A scipy sparse matrix as a torch CSR tensor (float32 and int32 indices by default: MKL's fast path).

    Args:
        S: (N, M) scipy sparse matrix.
        device: torch device (default CPU).
        dtype: torch value dtype (default float32).
    """
    import torch

    S = sp.csr_matrix(S)
    it = np.int32 if max(S.shape[0], S.nnz) < 2**31 else np.int64
    dtype = dtype or torch.float32
    with warnings.catch_warnings():  # "sparse CSR support is in beta" and the invariant-check notice
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(S.indptr.astype(it, copy=False)),
                                       torch.from_numpy(S.indices.astype(it, copy=False)),
                                       torch.from_numpy(S.data).to(dtype), size=S.shape, device=device)


def _torch_device(device):
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def propagate_torch(S, B, alpha: float = 0.9, *, tol: float = 1e-6, maxiter: int = 200, clip_negative: bool = True,
                    warn: bool = True, overwrite_b: bool = False):
    """Eq. 1 on tensors already on the device: ``S`` (N, N) torch CSR (e.g. from
    :func:`tusss.glcc.knn.knn_graph_torch` or :func:`torch_csr`), ``B`` (N, K) dense tensor of S's dtype and
    device (overwritten when ``overwrite_b``). Returns P* (N, K) tensor and :class:`CGInfo` (no reordering, no
    host copies of the graph)."""
    import torch

    if not 0.0 <= alpha < 1.0:
        raise InputError(f"alpha must be in [0, 1), got {alpha}")
    if B.ndim != 2 or B.shape[0] != S.shape[0] or S.shape[0] != S.shape[1]:
        raise InputError(f"B {tuple(B.shape)} must be (N, K) with N = {S.shape[0]} rows of the graph")

    buf: dict = {}

    def tmatvec(V):  # V - alpha S V, one SpMM, into a reused output buffer (no allocation per iteration)
        out = buf.get(tuple(V.shape))
        if out is None:
            buf.clear()
            out = buf[tuple(V.shape)] = torch.empty_like(V)
        return torch.addmm(V, S, V, alpha=-alpha, out=out)

    with torch.inference_mode():
        X, info = block_cg_torch(tmatvec, B, tol=tol, maxiter=maxiter, warn=warn, overwrite_b=overwrite_b)
        if clip_negative:
            X.clamp_(min=0.0)
    return X, info


@dataclass
class LPOperator:
    """The graph prepared once for the torch solver (reused by every solve on the same graph).

    Attributes:
        S: (N, N) torch CSR tensor on ``device`` (float32 / int32 by default), rows in ``perm`` order.
        perm: (N,) RCM order (row i of ``S`` is node ``perm[i]``) or None.
        seconds: time the preparation took (reordering, conversion, upload).
    """

    S: object
    perm: np.ndarray | None
    seconds: float = 0.0
    _perm_index: object = field(default=None, init=False, repr=False)

    def perm_index(self):
        """``perm`` as an (N,) int64 tensor on the operator's device (made once)."""
        if self._perm_index is None and self.perm is not None:
            self._perm_index = _index(self.perm, self.device)
        return self._perm_index

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.S.shape)  # type: ignore[attr-defined]

    @property
    def device(self):
        return self.S.device  # type: ignore[attr-defined]

    @property
    def dtype(self):
        return self.S.dtype  # type: ignore[attr-defined]


def prepare_operator(S: sp.spmatrix, *, device: str | None = None, dtype: type | None = None,
                     reorder: str | None = "auto") -> LPOperator:
    """Reorder (RCM on the CPU by default), convert and upload ``S`` for :func:`propagate`'s torch backend.

    Args:
        S: (N, N) scipy sparse symmetric affinity.
        device: torch device (default CUDA when available); dtype: np.float32 (default) or np.float64.
        reorder: "rcm", None, or "auto" (RCM on the CPU for N > 4096, none on CUDA).
    """
    import time

    import torch

    if reorder not in ("auto", "rcm", None):
        raise InputError(f"reorder must be 'auto', 'rcm' or None, got {reorder!r}")
    tdtype = {None: torch.float32, np.float32: torch.float32, np.float64: torch.float64}.get(dtype)
    if tdtype is None:
        raise InputError(f"dtype must be float32 or float64, got {dtype!r}")
    t0 = time.perf_counter()
    dev = _torch_device(device)
    S = sp.csr_matrix(S)
    perm = None
    if reorder == "rcm" or (reorder == "auto" and dev.type == "cpu" and S.shape[0] > 4096):
        perm = rcm_permutation(S)
        S = permute_symmetric(S, perm, dtype=np.float32 if tdtype == torch.float32 else np.float64)
    return LPOperator(torch_csr(S, dev, tdtype), perm, time.perf_counter() - t0)


def _unit_columns(Pc: np.ndarray, op: LPOperator):
    """(N, K) right-hand sides for the torch solve: rows in the operator's order, each column at unit norm
    (CG is scale-invariant; float32 would underflow tiny columns). Returns B (N, K) tensor of the operator's
    dtype and device, and the (K,) column norms (same dtype and device; 1 for zero columns).

    The norms are taken in float64 and the division is done in float64 whenever a norm lies outside float32's
    comfortable range; otherwise in place in the operator's dtype (no float64 copy of the block, whatever the
    input's dtype; the caller's array is never written)."""
    import torch

    with torch.inference_mode():
        P = torch.from_numpy(np.ascontiguousarray(Pc))
        if P.dtype not in (torch.float32, torch.float64):
            P = P.to(torch.float64)
        if op.perm is not None:
            P = P.index_select(0, op.perm_index())
        norm = torch.linalg.vector_norm(P, dim=0, dtype=torch.float64)
        norm[~(norm > 0)] = 1.0
        scale = norm.to(device=op.device, dtype=op.dtype)
        if bool(((norm > 1e-30) & (norm < 1e30)).all()):  # float32 division is exact enough: in place
            B = P.to(device=op.device, dtype=op.dtype)
            if B is P and op.perm is None:  # still the caller's array
                B = B.clone()
            B.div_(scale)
        else:
            B = (P.to(torch.float64) / norm).to(device=op.device, dtype=op.dtype)
        return B, scale


def propagate(
    S,
    Pc: np.ndarray,
    alpha: float = 0.9,
    *,
    tol: float = 1e-6,
    maxiter: int = 200,
    backend: str = "auto",
    clip_negative: bool = True,
    dtype: type | None = None,
    device: str | None = None,
    reorder: str | None = "auto",
) -> tuple[np.ndarray, CGInfo]:
    """Solve Eq. 1 ``(I - alpha S) P* = P^c`` for all K columns at once.

    Args:
        S: (N, N) symmetric normalised affinity (scipy sparse; zero diagonal), a
            :class:`tusss.glcc.knn.KnnGraph` (its prepared operator is cached on it, so later solves on the
            same graph skip the reordering and conversion), or an :class:`LPOperator` (torch backend).
        Pc: (N, K) soft labels.
        alpha: propagation magnitude in [0, 1).
        tol, maxiter: CG settings per column (reference: 1e-6, 200).
        backend: "auto" (= "torch") | "torch" | "numpy" (float64 SciPy, the reference arithmetic) | "cupy".
        clip_negative: clip negatives of P* to 0 (reference).
        dtype: computation dtype (default float32 for torch, float64 for numpy / cupy).
        device: torch backend: "cpu", "cuda", "cuda:1", ... (default: CUDA when available).
        reorder: torch backend: "rcm" (reverse Cuthill-McKee, then un-permuted), None, or "auto"
            (RCM on the CPU, none on CUDA).

    Returns:
        P* (N, K) float32 NumPy array, :class:`CGInfo`.
    """
    import time

    if not 0.0 <= alpha < 1.0:
        raise InputError(f"alpha must be in [0, 1), got {alpha}")
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    graph = None
    if hasattr(S, "lp_operator") and hasattr(S, "S"):  # a KnnGraph
        graph, S = S, S.S
    if isinstance(S, LPOperator) and backend not in ("auto", "torch"):
        raise InputError(f"an LPOperator runs on the torch backend, not {backend!r}")
    Pc = np.asarray(Pc)
    if Pc.ndim != 2 or Pc.shape[0] != S.shape[0] or S.shape[0] != S.shape[1]:
        raise InputError(f"Pc {Pc.shape} must be (N, K) with N = {S.shape[0]} rows of the graph")
    check_finite(Pc, "Pc")
    t0 = time.perf_counter()
    if backend in ("auto", "torch"):
        import torch

        if isinstance(S, LPOperator):
            op = S
        elif graph is not None:
            op = graph.lp_operator(device=device, dtype=dtype, reorder=reorder)
        else:
            op = prepare_operator(S, device=device, dtype=dtype, reorder=reorder)
        B, scale = _unit_columns(Pc, op)
        t1 = time.perf_counter()
        Xt, info = propagate_torch(op.S, B, alpha, tol=tol, maxiter=maxiter, clip_negative=clip_negative,
                                   overwrite_b=True)
        with torch.inference_mode():
            Xt.mul_(scale)
            if op.perm is not None:  # back to the caller's node order: row perm[i] of the result is row i
                Xt = torch.empty_like(Xt).index_copy_(0, op.perm_index(), Xt)
            X = Xt.cpu().numpy()
        info.seconds = {"prepare": t1 - t0, "solve": time.perf_counter() - t1}
        return X, info
    if reorder not in ("auto", "rcm", None):
        raise InputError(f"reorder must be 'auto', 'rcm' or None, got {reorder!r}")
    xp, xsp, name = _modules(backend)
    dtype = dtype or np.float64
    S = S.tocsr().astype(dtype, copy=False)
    if name == "cupy":
        Sd = xsp.csr_matrix(S)
        B = xp.asarray(Pc, dtype=dtype)
    else:
        Sd = S
        B = np.ascontiguousarray(Pc, dtype=dtype)

    def matvec(V):
        return V - alpha * (Sd @ V)

    t1 = time.perf_counter()
    X, info = block_cg(matvec, B, tol=tol, maxiter=maxiter, xp=xp)
    X = _to_numpy(X)
    if clip_negative:
        X = np.maximum(X, 0.0)
    info.seconds = {"prepare": t1 - t0, "solve": time.perf_counter() - t1}
    return X.astype(np.float32), info
