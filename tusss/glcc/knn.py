"""k-nearest-neighbour graph of L2-normalised mask embeddings (paper §3, reference §6.4).

Backends (all return cosine similarities and indices, best first):

- ``"torch"``: exact, chunked ``X_chunk @ Xᵀ`` + ``topk`` (fast on CPU where faiss's bundled OpenBLAS runs a
  generic kernel; also runs on CUDA tensors).
- ``"faiss"``: exact ``IndexFlatIP``.
- ``"faiss-ivf"``: approximate ``IndexIVFFlat`` (inner product), ``nlist`` / ``nprobe``.
- ``"faiss-hnsw"``: approximate ``IndexHNSWFlat`` (inner product), ``hnsw_m`` / ``ef_search``.

Self-loops are removed *by index* (an approximate index does not always return the query first): search
k + 1, drop the entry equal to the query's own index, else drop the last one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from tusss.errors import InputError
from tusss.validate import check_finite

__all__ = ["BACKENDS", "KnnGraph", "l2_normalize", "knn_search", "knn_graph", "build_graph", "recall_at_k"]

BACKENDS = ("torch", "faiss", "faiss-ivf", "faiss-hnsw")


def l2_normalize(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """(N, D) float -> (N, D) float32 rows of unit L2 norm. Zero rows raise InputError."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(f"{name} must be (N, D), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{name} must be floating point, got {x.dtype}")
    check_finite(x, name)
    x = x.astype(np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(n == 0):
        raise InputError(f"{name} has {int((n == 0).sum())} all-zero rows (cannot be L2-normalised)")
    return np.ascontiguousarray(x / n)


def _torch_search(q: np.ndarray, base: np.ndarray, k: int, budget_bytes: int, device: str | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    import warnings

    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with warnings.catch_warnings():  # read-only memmaps are fine: nothing writes to B
        warnings.simplefilter("ignore", UserWarning)
        B = torch.from_numpy(base).to(dev)
    N = base.shape[0]
    chunk = max(1, min(q.shape[0], budget_bytes // (4 * max(N, 1))))
    sims = np.empty((q.shape[0], k), np.float32)
    idx = np.empty((q.shape[0], k), np.int64)
    with torch.inference_mode():
        for a in range(0, q.shape[0], chunk):
            Q = torch.from_numpy(q[a:a + chunk]).to(dev)
            s, i = torch.topk(Q @ B.T, k, dim=1, largest=True, sorted=True)
            sims[a:a + chunk] = s.cpu().numpy()
            idx[a:a + chunk] = i.cpu().numpy()
    return sims, idx


def _faiss_index(base: np.ndarray, backend: str, nlist: int | None, nprobe: int, hnsw_m: int, ef_search: int,
                 ef_construction: int = 40):
    import faiss

    d = base.shape[1]
    if backend == "faiss":
        index = faiss.IndexFlatIP(d)
    elif backend == "faiss-ivf":
        # 4 sqrt(N) lists, but >= 39 training points per list (faiss's own advice)
        nl = nlist or max(1, min(4096, int(4 * np.sqrt(base.shape[0])), base.shape[0] // 39))
        quant = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quant, d, nl, faiss.METRIC_INNER_PRODUCT)
        index.train(base)
        index.nprobe = nprobe
    elif backend == "faiss-hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = max(ef_search, 1)
    else:  # pragma: no cover - checked by the caller
        raise InputError(f"unknown kNN backend {backend!r}")
    index.add(base)
    return index


def knn_search(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    *,
    backend: str = "torch",
    budget_bytes: int = 256 << 20,
    device: str | None = None,
    nlist: int | None = None,
    nprobe: int = 16,
    hnsw_m: int = 32,
    ef_search: int = 128,
    index: object | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """k largest inner products of each query against ``base``.

    Args:
        queries: (M, D) float32 L2-normalised.
        base: (N, D) float32 L2-normalised.
        k: neighbours per query (<= N).
        backend: one of :data:`BACKENDS`.
        budget_bytes: torch backend: size of one (chunk, N) similarity tile.
        index: a prebuilt faiss index over ``base`` (faiss backends), reused instead of building one.

    Returns:
        sims (M, k) float32 and indices (M, k) int64, best first. Approximate backends may return -1
        indices (with -inf/garbage sims) when fewer than k results are found.
    """
    if backend not in BACKENDS:
        raise InputError(f"kNN backend must be one of {BACKENDS}, got {backend!r}")
    if queries.ndim != 2 or base.ndim != 2 or queries.shape[1] != base.shape[1]:
        raise InputError(f"queries {queries.shape} and base {base.shape} must be (M, D) and (N, D) with equal D")
    if not 1 <= k <= base.shape[0]:
        raise InputError(f"k={k} must be in [1, N={base.shape[0]}]")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    b = np.ascontiguousarray(base, dtype=np.float32)
    if backend == "torch":
        return _torch_search(q, b, k, budget_bytes, device)
    if index is None:
        index = _faiss_index(b, backend, nlist, nprobe, hnsw_m, ef_search)
    sims, idx = index.search(q, k)
    return sims.astype(np.float32), idx.astype(np.int64)


def _drop_self(sims: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, k+1) results -> (N, k) without the query's own index (by index, not by column 0)."""
    N = idx.shape[0]
    is_self = idx == np.arange(N)[:, None]
    # rows without self: drop the last column instead
    no_self = ~is_self.any(1)
    is_self[no_self, -1] = True
    # rows where self appears more than once cannot happen (indices are unique per row)
    keep = ~is_self
    return sims[keep].reshape(N, k), idx[keep].reshape(N, k)


@dataclass
class KnnGraph:
    """Degree-normalised affinity of the training embeddings.

    Attributes:
        S: (N, N) scipy CSR, ``D^-1/2 (W + Wᵀ) D^-1/2`` with zero diagonal.
        degree: (N,) float64 row sums of ``W + Wᵀ`` (zeros replaced by 1).
        k: neighbours per node used to build W.
        gamma: similarity exponent.
        recall: recall@k of an approximate backend against exact search on a sample (None if not measured).
    """

    S: sp.csr_matrix
    degree: np.ndarray
    k: int
    gamma: float
    recall: float | None = None


def knn_graph(sims: np.ndarray, idx: np.ndarray, gamma: float = 1.0, dtype: type = np.float64) -> KnnGraph:
    """Build the normalised graph from self-free neighbour lists (reference §6.4).

    Args:
        sims: (N, k) cosine similarities; idx: (N, k) int64 neighbour indices (-1 = missing).
        gamma: W_ij = sim_ij ** gamma (negative similarities are clipped to 0 when gamma is not 1).
        dtype: dtype of S.

    Returns:
        :class:`KnnGraph`.
    """
    N, k = idx.shape
    valid = idx >= 0
    w = sims.astype(np.float64)
    if gamma != 1.0:
        w = np.power(np.maximum(w, 0.0), gamma)
    rows = np.repeat(np.arange(N), k)[valid.ravel()]
    cols = idx.ravel()[valid.ravel()]
    vals = w.ravel()[valid.ravel()]
    W = sp.csr_matrix((vals, (rows, cols)), shape=(N, N))
    W = (W + W.T).tocsr()
    W.setdiag(0)
    W.eliminate_zeros()
    d = np.asarray(W.sum(1)).ravel()
    d[d == 0] = 1.0
    r = 1.0 / np.sqrt(d)
    S = sp.diags(r) @ W @ sp.diags(r)
    S = S.tocsr().astype(dtype)
    S.sort_indices()
    return KnnGraph(S=S, degree=d, k=k, gamma=float(gamma))


def build_graph(
    X: np.ndarray,
    k: int = 50,
    gamma: float = 1.0,
    *,
    backend: str = "torch",
    normalized: bool = False,
    dtype: type = np.float64,
    recall_sample: int = 0,
    **search_kw: object,
) -> KnnGraph:
    """kNN graph of the (N, D) embeddings ``X``: search k + 1, remove self by index, build S.

    Args:
        X: (N, D) float embeddings (L2-normalised here unless ``normalized``).
        k: neighbours per node (reference: 50).
        gamma: similarity exponent (reference: 1).
        backend: :data:`BACKENDS`; ``search_kw`` go to :func:`knn_search`.
        recall_sample: for an approximate backend, measure recall@k against exact (torch) search on this
            many random queries (seeded) and store it in ``KnnGraph.recall``.
    """
    Xn = np.ascontiguousarray(X, dtype=np.float32) if normalized else l2_normalize(X)
    N = Xn.shape[0]
    if N < 2:
        raise InputError(f"a kNN graph needs at least 2 embeddings, got {N}")
    k = min(k, N - 1)
    sims, idx = knn_search(Xn, Xn, k + 1, backend=backend, **search_kw)  # type: ignore[arg-type]
    sims, idx = _drop_self(sims, idx, k)
    g = knn_graph(sims, idx, gamma=gamma, dtype=dtype)
    if recall_sample and backend in ("faiss-ivf", "faiss-hnsw"):
        q = np.random.default_rng(0).choice(N, min(recall_sample, N), replace=False)
        _, ex = _drop_self_rows(*knn_search(Xn[q], Xn, k + 1, backend="torch"), q, k)
        g.recall = recall_at_k(idx[q], ex)
    return g


def _drop_self_rows(sims: np.ndarray, idx: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_drop_self` for queries that are the base rows ``rows``."""
    is_self = idx == rows[:, None]
    is_self[~is_self.any(1), -1] = True
    keep = ~is_self
    return sims[keep].reshape(len(rows), k), idx[keep].reshape(len(rows), k)


def recall_at_k(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Mean fraction of the exact neighbours (per row) found by the approximate search."""
    if approx_idx.shape[0] != exact_idx.shape[0]:
        raise InputError("recall_at_k: row counts differ")
    hits = [np.intersect1d(a[a >= 0], e).size / e.size for a, e in zip(approx_idx, exact_idx)]
    return float(np.mean(hits)) if hits else 1.0
