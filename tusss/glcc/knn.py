"""k-nearest-neighbour graph of L2-normalised mask embeddings (paper §3, docs/reference-code.md §6.4).

Backends (all return cosine similarities and indices, best first):

- ``"torch"``: exact, chunked ``X_chunk @ Xᵀ`` + ``topk`` (fast on CPU where faiss's bundled OpenBLAS runs a
  generic kernel; also runs on CUDA tensors).
- ``"faiss"``: exact ``IndexFlatIP``.
- ``"faiss-ivf"``: approximate ``IndexIVFFlat`` (inner product), ``nlist`` / ``nprobe``.
- ``"faiss-hnsw"``: approximate ``IndexHNSWFlat`` (inner product), ``hnsw_m`` / ``ef_search``.

Self-loops are removed *by index* (an approximate index does not always return the query first): search
k + 1, drop the entry equal to the query's own index, else drop the last one.

Big N (:func:`knn_tiled`): exact search over a list of (n_i, D) blocks -- e.g. the memory-mapped float16
shards of an embedding store, which need not fit in RAM -- tiled over query rows and over database chunks,
with a running top-k per query row, rows L2-normalised tile by tile (float32 on the CPU, float16 products on
CUDA), and self-loops removed by index inside the tile. Only one query tile, one database chunk and the
(N, k) result are resident at a time (on a GPU the whole database may stay resident when it fits).
``faiss_sharded_search`` is the faiss multi-GPU path (``index_cpu_to_all_gpus`` with ``shard=True``),
available where faiss-gpu is installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from tusss.errors import InputError
from tusss.validate import check_finite

__all__ = ["BACKENDS", "KnnGraph", "l2_normalize", "knn_search", "knn_graph", "build_graph", "recall_at_k",
           "knn_tiled", "RowBlocks", "NpyRows", "faiss_gpu_available", "faiss_sharded_search", "knn_graph_torch"]

BACKENDS = ("torch", "torch-tiled", "faiss", "faiss-ivf", "faiss-hnsw")


def l2_normalize(x, name: str = "embeddings", chunk: int = 65536) -> np.ndarray:
    """(N, D) float -> (N, D) float32 rows of unit L2 norm. Zero rows raise InputError.

    ``x`` may also be a :class:`RowBlocks` / list of (n_i, D) blocks (e.g. the memory-mapped float16 shards
    of a store): the output is then filled block by block, ``chunk`` rows at a time, so that the only
    full-size array is the float32 result (same values as normalising the concatenation).
    """
    if isinstance(x, (RowBlocks, list, tuple)):
        B = _as_blocks(x)
        out = np.empty(B.shape, np.float32)
        for a in range(0, len(B), chunk):
            b = min(len(B), a + chunk)
            out[a:b] = _normalize_rows(B.rows(a, b, np.float32), name, offset=a)
        return out
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(f"{name} must be (N, D), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{name} must be floating point, got {x.dtype}")
    return _normalize_rows(np.array(x, dtype=np.float32, order="C"), name)  # one copy, normalised in place


def _normalize_rows(x: np.ndarray, name: str, offset: int = 0) -> np.ndarray:
    """Normalise the float32 rows of ``x`` in place (after the finiteness / zero-row checks)."""
    check_finite(x, name)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(n == 0):
        where = f" (first at row {offset + int(np.flatnonzero(n.ravel() == 0)[0])})" if offset else ""
        raise InputError(f"{name} has {int((n == 0).sum())} all-zero rows (cannot be L2-normalised){where}")
    x /= n
    return x


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
    if backend == "torch-tiled":  # base rows read tile by tile (memmaps stay on disk), no float32 copy of base
        return knn_tiled(base, k, queries=queries, normalize=False, exclude_self=False, device=device,
                         budget_bytes=budget_bytes)
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
    _operators: dict = field(default_factory=dict, repr=False, compare=False)

    def lp_operator(self, device: str | None = None, dtype: type | None = None, reorder: str | None = "auto"):
        """S prepared for the torch label-propagation solver (:func:`tusss.glcc.propagation.prepare_operator`),
        built on first use and cached per (device, dtype, reorder): a second solve on this graph (the next
        bootstrap round, a grid over alpha) skips the reordering and conversion."""
        from tusss.glcc.propagation import _torch_device, prepare_operator

        key = (str(_torch_device(device)), dtype, reorder)
        if key not in self._operators:
            self._operators[key] = prepare_operator(self.S, device=device, dtype=dtype, reorder=reorder)
        return self._operators[key]


def knn_graph(sims: np.ndarray, idx: np.ndarray, gamma: float = 1.0, dtype: type = np.float64) -> KnnGraph:
    """Build the normalised graph from self-free neighbour lists (docs/reference-code.md §6.4).

    Args:
        sims: (N, k) cosine similarities; idx: (N, k) int64 neighbour indices (-1 = missing).
        gamma: W_ij = sim_ij ** gamma (negative similarities are clipped to 0 when gamma is not 1).
        dtype: dtype of S.

    Returns:
        :class:`KnnGraph`.

    W is assembled directly in CSR (the neighbour lists are its rows) and normalised in place, so the peak
    is about three copies of the N k entries (W, Wᵀ and their sum) rather than the COO and diagonal-product
    intermediates.
    """
    N, k = idx.shape
    idx = np.asarray(idx)
    valid = (idx >= 0) & (idx != np.arange(N)[:, None])  # missing entries and self-loops (diagonal := 0)
    w = np.asarray(sims, dtype=np.float64)
    if gamma != 1.0:
        w = np.power(np.maximum(w, 0.0), gamma)
    it = np.int32 if N < 2**31 and N * k < 2**31 else np.int64
    indptr = np.zeros(N + 1, it)
    np.cumsum(valid.sum(1), out=indptr[1:])
    cols, vals = idx[valid].astype(it), w[valid]
    del w
    W = sp.csr_matrix((vals, cols, indptr), shape=(N, N))
    W.sum_duplicates()  # sorts each row (neighbour lists hold no duplicates)
    del cols, vals
    W = (W + W.T).tocsr()
    W.eliminate_zeros()
    d = np.asarray(W.sum(1)).ravel()
    d[d == 0] = 1.0
    r = 1.0 / np.sqrt(d)
    W.data *= np.repeat(r, np.diff(W.indptr))  # D^-1/2 W D^-1/2 in place
    W.data *= r[W.indices]
    S = W.astype(dtype, copy=False)
    S.sort_indices()
    return KnnGraph(S=S, degree=d, k=k, gamma=float(gamma))


def knn_graph_torch(sims, idx, gamma: float = 1.0):
    """:func:`knn_graph` on torch tensors (any device): the graph of a big N assembled where the kNN ran.

    Args:
        sims: (N, k) float tensor of similarities; idx: (N, k) int64 tensor of neighbours (-1 = missing).
        gamma: similarity exponent.

    Returns:
        S (N, N) float32 torch CSR tensor (int32 indices when they fit) with zero diagonal, and the
        (N,) float32 degree tensor (row sums of W + Wᵀ, zeros replaced by 1).
    """
    import torch

    N, k = idx.shape
    dev = idx.device
    w = sims.float()
    if gamma != 1.0:
        w = w.clamp(min=0.0).pow(gamma)
    rows = torch.arange(N, device=dev).repeat_interleave(k)
    cols = idx.reshape(-1)
    vals = w.reshape(-1)
    keep = (cols >= 0) & (cols != rows)
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    import warnings

    with warnings.catch_warnings():  # "sparse CSR is beta" / "invariant checks disabled" notices
        warnings.simplefilter("ignore", UserWarning)
        return _assemble_torch(torch, N, rows, cols, vals, dev)


def _assemble_torch(torch, N, rows, cols, vals, dev):
    W = torch.sparse_coo_tensor(torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])]),
                                torch.cat([vals, vals]), (N, N)).coalesce()  # W + Wᵀ (reciprocal pairs sum)
    ij, v = W.indices(), W.values()
    nz = v != 0
    ij, v = ij[:, nz], v[nz]
    d = torch.zeros(N, device=dev, dtype=torch.float32).index_add_(0, ij[0], v)
    d = torch.where(d == 0, torch.ones_like(d), d)
    r = d.rsqrt()
    v = v * r[ij[0]] * r[ij[1]]
    crow = torch.zeros(N + 1, dtype=torch.int64, device=dev)
    crow[1:] = torch.cumsum(torch.bincount(ij[0], minlength=N), 0)
    it = torch.int32 if max(N, v.numel()) < 2**31 else torch.int64
    S = torch.sparse_csr_tensor(crow.to(it), ij[1].to(it), v, size=(N, N))
    return S, d


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
        X: (N, D) float embeddings (L2-normalised here unless ``normalized``), or a :class:`RowBlocks` / list of
            (n_i, D) blocks (e.g. memory-mapped store shards): then the exact tiled search :func:`knn_tiled`.
        k: neighbours per node (reference: 50).
        gamma: similarity exponent (reference: 1).
        backend: :data:`BACKENDS`; ``search_kw`` go to :func:`knn_search`.
        recall_sample: for an approximate backend, measure recall@k against exact (torch) search on this
            many random queries (seeded) and store it in ``KnnGraph.recall``.
    """
    if isinstance(X, (RowBlocks, list, tuple)) or backend == "torch-tiled":
        # store shards / memmaps: exact tiled search, rows normalised tile by tile (never all in float32)
        if backend not in ("torch", "torch-tiled"):
            raise InputError(f"a sharded embedding source needs backend 'torch' or 'torch-tiled', got {backend!r}")
        B = _as_blocks(X)
        if len(B) < 2:
            raise InputError(f"a kNN graph needs at least 2 embeddings, got {len(B)}")
        k = min(k, len(B) - 1)
        kw = {key: search_kw[key] for key in ("device", "half", "row_tile", "db_tile", "budget_bytes")
              if key in search_kw}
        sims, idx = knn_tiled(B, k, normalize=not normalized, **kw)  # type: ignore[arg-type]
        return knn_graph(sims, idx, gamma=gamma, dtype=dtype)
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


class NpyRows:
    """A (n, D) ``.npy`` file read on demand: every ``[...]`` maps the file, copies the rows asked for and
    unmaps it again, so reading a whole store shard by shard leaves no file pages mapped in the process
    (a long-lived ``np.memmap`` keeps every page it touched in the resident set).

    Args:
        path: the ``.npy`` file (e.g. one embedding-store shard).
    """

    def __init__(self, path) -> None:
        self.path = str(path)
        m = np.load(self.path, mmap_mode="r")
        self.shape, self.dtype, self.ndim = m.shape, m.dtype, m.ndim
        del m

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        m = np.load(self.path, mmap_mode="r")
        try:
            return np.array(m[key])
        finally:
            del m


class RowBlocks:
    """A read-only (N, D) matrix given as row blocks (arrays or ``np.memmap`` shards), never concatenated.

    Args:
        blocks: sequence of (n_i, D) floating arrays (float16 / float32; memory maps are read lazily), or
            :class:`NpyRows` (files mapped only while rows are copied out).

    ``rows(a, b, dtype)`` returns rows [a, b) as one (b - a, D) array of ``dtype`` (copying only those rows);
    ``offsets`` are the (len(blocks) + 1,) first-row indices.
    """

    def __init__(self, blocks) -> None:
        self.blocks = [b for b in blocks]
        if not self.blocks:
            raise InputError("RowBlocks needs at least one block")
        dims = {b.shape[1] if b.ndim == 2 else None for b in self.blocks}
        if len(dims) != 1 or None in dims:
            raise InputError(f"blocks must all be (n_i, D) with one D, got shapes {[b.shape for b in self.blocks]}")
        for b in self.blocks:
            if not np.issubdtype(b.dtype, np.floating):
                raise InputError(f"embedding blocks must be floating point, got {b.dtype}")
        self.dim = dims.pop()
        self.offsets = np.concatenate([[0], np.cumsum([b.shape[0] for b in self.blocks])]).astype(np.int64)
        self.shape = (int(self.offsets[-1]), self.dim)

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, a: int, b: int, dtype=np.float32) -> np.ndarray:
        """Rows [a, b) as a (b - a, D) ``dtype`` array."""
        out = np.empty((b - a, self.dim), dtype)
        i = int(np.searchsorted(self.offsets, a, side="right") - 1)
        r = a
        while r < b:
            lo, hi = self.offsets[i], self.offsets[i + 1]
            e = min(b, hi)
            out[r - a:e - a] = self.blocks[i][r - lo:e - lo]
            r, i = e, i + 1
        return out

    def take(self, idx: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Rows ``idx`` (any order) as a (len(idx), D) ``dtype`` array."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((idx.size, self.dim), dtype)
        blk = np.searchsorted(self.offsets, idx, side="right") - 1
        for i in np.unique(blk):
            sel = np.flatnonzero(blk == i)
            out[sel] = self.blocks[i][idx[sel] - self.offsets[i]]
        return out


def _as_blocks(x) -> RowBlocks:
    if isinstance(x, RowBlocks):
        return x
    if isinstance(x, (list, tuple)):
        return RowBlocks(x)
    return RowBlocks([x])


def knn_tiled(
    base,
    k: int,
    *,
    queries=None,
    normalize: bool = True,
    exclude_self: bool | None = None,
    device: str | None = None,
    half: bool | None = None,
    row_tile: int | None = None,
    db_tile: int | None = None,
    budget_bytes: int | None = None,
    resident_bytes: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products in tiles, never materialising the (N, D) base in float32.

    Args:
        base: (N, D) array, memmap, a list of (n_i, D) blocks (store shards), or :class:`RowBlocks`.
        k: neighbours per query (<= N, or <= N - 1 with ``exclude_self``).
        queries: (M, D) queries in the same forms; None: the base itself (the kNN graph).
        normalize: L2-normalise rows as tiles are read (zero rows raise InputError).
        exclude_self: drop the query's own index (default: True when ``queries`` is None).
        device: torch device (default CUDA when available).
        half: float16 products (default: True on CUDA, False on the CPU). Neighbours are chosen from the
            float16 products; the returned similarities are recomputed in float32 for those neighbours.
        row_tile, db_tile: query rows per tile and database rows per chunk (default: db_tile 65,536 on the CPU,
            131,072 on CUDA; row_tile from ``budget_bytes``, the size of one (row_tile, db_tile) similarity tile:
            256 MB on the CPU, 2 GB on CUDA).
        resident_bytes: keep the normalised database resident on the device (float32, plus its float16 copy
            with ``half``) when it takes less than this (default 0 on the CPU; on CUDA half the free memory).
            Resident, the float32 re-scoring gathers on the device; otherwise from the host rows.

    Returns:
        sims (M, k) float32 and indices (M, k) int64 (global row numbers), best first.
    """
    import torch

    B = _as_blocks(base)
    Qb = B if queries is None else _as_blocks(queries)
    if Qb.dim != B.dim:
        raise InputError(f"queries have D = {Qb.dim}, the base D = {B.dim}")
    if exclude_self is None:
        exclude_self = queries is None
    if exclude_self and len(Qb) != len(B):
        raise InputError("exclude_self needs the queries to be the base rows (queries=None)")
    N, M = len(B), len(Qb)
    kmax = N - 1 if exclude_self else N
    if not 1 <= k <= kmax:
        raise InputError(f"k={k} must be in [1, {kmax}] for N = {N}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if half is None:
        half = dev.type == "cuda"
    cdtype = torch.float16 if half else torch.float32
    esize = 2 if half else 4
    if budget_bytes is None:
        budget_bytes = (2 << 30) if dev.type == "cuda" else (256 << 20)
    db_tile = int(db_tile or max(k + 1, min(N, 131072 if dev.type == "cuda" else 65536)))
    row_tile = int(row_tile or max(1, min(M, budget_bytes // (esize * db_tile))))
    if dev.type == "cuda" and not resident_bytes:
        resident_bytes = torch.cuda.mem_get_info(dev)[0] // 2
    # resident: the normalised database in float32 on the device (+ its float16 copy for the products)
    resident = N * B.dim * (4 + (2 if half else 0)) <= resident_bytes

    def load(src: RowBlocks, a: int, b: int):
        """Rows [a, b) normalised, as a float32 device tensor."""
        x = src.rows(a, b, np.float32)
        if normalize:
            check_finite(x, "embeddings")
            n = np.linalg.norm(x, axis=1, keepdims=True)
            if np.any(n == 0):
                raise InputError(f"embeddings rows {a}..{b} hold {int((n == 0).sum())} all-zero rows")
            x /= n
        return torch.from_numpy(x).to(dev)

    full32 = fullc = None
    if resident:
        full32 = torch.empty((N, B.dim), dtype=torch.float32, device=dev)
        for c in range(0, N, db_tile):
            full32[c:min(N, c + db_tile)] = load(B, c, min(N, c + db_tile))
        fullc = full32.to(cdtype) if half else full32

    def chunk(c: int):
        e = min(N, c + db_tile)
        return fullc[c:e] if resident else load(B, c, e).to(cdtype)

    sims = np.empty((M, k), np.float32)
    idx = np.empty((M, k), np.int64)
    with torch.inference_mode():
        for a in range(0, M, row_tile):
            b = min(M, a + row_tile)
            Q32 = full32[a:b] if (resident and queries is None) else load(Qb, a, b)
            Q = Q32.to(cdtype) if half else Q32
            best_v = torch.full((b - a, k), -float("inf"), device=dev, dtype=cdtype)
            best_i = torch.full((b - a, k), -1, dtype=torch.int64, device=dev)
            for c in range(0, N, db_tile):
                e = min(N, c + db_tile)
                S = Q @ chunk(c).T  # float16 on CUDA: top-k in float16, exact values recomputed below
                if exclude_self and c < b and a < e:  # the diagonal of this tile: own index -> -inf
                    r = torch.arange(max(a, c), min(b, e), device=dev)
                    S[r - a, r - c] = -float("inf")
                kk = min(k, e - c)
                v, i = torch.topk(S, kk, dim=1, largest=True, sorted=False)
                allv = torch.cat([best_v, v], 1)
                alli = torch.cat([best_i, i + c], 1)
                best_v, j = torch.topk(allv, k, dim=1, largest=True, sorted=True)
                best_i = torch.gather(alli, 1, j)
            if half:  # exact float32 similarities of the chosen neighbours, re-sorted
                if resident:
                    nb = full32[best_i.clamp(min=0)]
                else:
                    bi = best_i.clamp(min=0).cpu().numpy()
                    nb = torch.from_numpy(_normalized(B.take(bi.ravel(), np.float32), normalize)).to(dev)
                best_v = (nb.view(b - a, k, -1) @ Q32.unsqueeze(2)).squeeze(2)
                best_v, j = torch.sort(best_v, dim=1, descending=True)
                best_i = torch.gather(best_i, 1, j)
            sims[a:b] = best_v.cpu().numpy()
            idx[a:b] = best_i.cpu().numpy()
    return sims, idx


def _normalized(x: np.ndarray, normalize: bool) -> np.ndarray:
    if normalize:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def faiss_gpu_available() -> bool:
    """True when faiss with GPU support is importable and sees a GPU."""
    try:
        import faiss

        return hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0
    except Exception:
        return False


def faiss_sharded_search(base, k: int, *, queries=None, exclude_self: bool | None = None, add_chunk: int = 1 << 20,
                         query_chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Exact search with faiss's ``IndexFlatIP`` sharded over all GPUs (``index_cpu_to_all_gpus(shard=True)``).

    The base (same forms as :func:`knn_tiled`) is L2-normalised and added chunk by chunk (float32 chunks of
    ``add_chunk`` rows), so the host never holds it in float32 at once; the shards live on the GPUs.

    Returns:
        sims (M, k) float32, indices (M, k) int64, best first, self removed by index when ``exclude_self``.
    """
    if not faiss_gpu_available():
        raise InputError("faiss_sharded_search needs faiss-gpu and a GPU (pip install faiss-gpu-cu12)")
    import faiss

    B = _as_blocks(base)
    Qb = B if queries is None else _as_blocks(queries)
    if exclude_self is None:
        exclude_self = queries is None
    co = faiss.GpuMultipleClonerOptions()
    co.shard = True
    index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(B.dim), co=co)
    for a in range(0, len(B), add_chunk):
        index.add(_normalized(B.rows(a, min(len(B), a + add_chunk)), True))
    kk = k + 1 if exclude_self else k
    sims = np.empty((len(Qb), k), np.float32)
    idx = np.empty((len(Qb), k), np.int64)
    for a in range(0, len(Qb), query_chunk):
        b = min(len(Qb), a + query_chunk)
        s, i = index.search(_normalized(Qb.rows(a, b), True), kk)
        if exclude_self:
            s, i = _drop_self_rows(s, i, np.arange(a, b), k)
        sims[a:b], idx[a:b] = s, i
    return sims, idx
