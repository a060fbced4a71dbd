"""kNN graph and transductive label propagation against brute force, dense solves, scipy CG and sklearn."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from tusss.errors import InputError
from tusss.glcc.knn import build_graph, knn_search, l2_normalize, recall_at_k
from tusss.glcc.propagation import block_cg, cupy_available, propagate


def clustered(n=300, d=16, c=4, spread=0.5, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d))
    y = rng.integers(0, c, n)
    x = centers[y] + spread * rng.normal(size=(n, d))
    return x.astype(np.float32), y


def brute_graph(X, k, gamma=1.0):
    """Dense reference: W_ij = cos^gamma for the k nearest j != i, W + Wᵀ, D^-1/2 W D^-1/2."""
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    C = Xn.astype(np.float64) @ Xn.T.astype(np.float64)
    np.fill_diagonal(C, -np.inf)
    N = len(X)
    W = np.zeros((N, N))
    for i in range(N):
        nn = np.argsort(-C[i], kind="stable")[:k]
        W[i, nn] = C[i, nn] ** gamma
    W = W + W.T
    np.fill_diagonal(W, 0)
    d = W.sum(1)
    d[d == 0] = 1
    return W / np.sqrt(d)[:, None] / np.sqrt(d)[None, :], d


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_graph_equals_brute_force(backend):
    X, _ = clustered(200, 12)
    g = build_graph(X, k=7, backend=backend)
    S_ref, d_ref = brute_graph(X, 7)
    np.testing.assert_allclose(g.S.toarray(), S_ref, atol=1e-6)
    np.testing.assert_allclose(g.degree, d_ref, rtol=1e-5)
    assert g.S.diagonal().max() == 0
    g2 = build_graph(X, k=5, gamma=2.0, backend=backend)
    np.testing.assert_allclose(g2.S.toarray(), brute_graph(X, 5, 2.0)[0], atol=1e-6)


def test_torch_chunks_match_single_tile():
    X = l2_normalize(clustered(150, 8)[0])
    s1, i1 = knn_search(X, X, 9, backend="torch", budget_bytes=4 * 150 * 7)  # 7-row chunks
    s2, i2 = knn_search(X, X, 9, backend="torch")
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)


def test_self_removed_by_index_not_column():
    # duplicated points: the query itself need not come first
    X = np.repeat(l2_normalize(clustered(40, 6)[0]), 2, axis=0)
    g = build_graph(X, k=3, backend="torch", normalized=True)
    assert g.S.diagonal().max() == 0
    assert all(g.S[i, i ^ 1] > 0 for i in range(len(X)))  # the twin is a neighbour


@pytest.mark.parametrize("backend", ["faiss-ivf", "faiss-hnsw"])
def test_approximate_backends_recall(backend):
    X = l2_normalize(clustered(600, 16, c=6)[0])
    _, exact = knn_search(X, X, 10, backend="torch")
    _, approx = knn_search(X, X, 10, backend=backend, nlist=8, nprobe=8)
    assert recall_at_k(approx, exact) > 0.9
    g = build_graph(X, k=9, backend=backend, normalized=True, nlist=8, nprobe=8, recall_sample=100)
    assert g.S.diagonal().max() == 0 and abs(g.S - g.S.T).max() < 1e-12
    assert g.recall is not None and g.recall > 0.9


def soft_labels(n, k, seed=1):
    rng = np.random.default_rng(seed)
    P = rng.random((n, k)) * (rng.random((n, k)) < 0.3)
    P[: n // 10] = 0  # some all-zero rows
    P[:, -1] = 0  # an all-zero column converges at once
    return P


def test_propagation_equals_dense_solve_and_scipy_cg():
    X, _ = clustered(250, 10)
    g = build_graph(X, k=8)
    P = soft_labels(250, 5)
    alpha = 0.9
    Pstar, info = propagate(g.S, P, alpha, backend="numpy", clip_negative=False)
    dense = np.linalg.solve(np.eye(250) - alpha * g.S.toarray(), P)
    np.testing.assert_allclose(Pstar, dense, atol=1e-5 * np.abs(dense).max())
    assert info.converged.all() and info.spmm_calls == info.iterations.max()
    A = sp.eye(250) - alpha * g.S
    cols = [spla.cg(A, P[:, c], rtol=1e-6, maxiter=200, x0=np.zeros(250))[0] for c in range(5)]
    np.testing.assert_allclose(Pstar, np.stack(cols, 1), atol=1e-6)
    # clipping (reference): negatives -> 0
    Pc, _ = propagate(g.S, P - 0.05, alpha, backend="numpy")
    assert Pc.min() >= 0 and Pc.dtype == np.float32


def test_block_cg_column_iterations_match_scalar_cg():
    rng = np.random.default_rng(3)
    M = rng.normal(size=(60, 60))
    A = M @ M.T + 60 * np.eye(60)
    B = rng.normal(size=(60, 4))
    B[:, 1] *= 1e-3
    X, info = block_cg(lambda V: A @ V, B, tol=1e-10, maxiter=500)
    np.testing.assert_allclose(X, np.linalg.solve(A, B), rtol=1e-7, atol=1e-12)
    for c in range(4):
        n = []
        spla.cg(A, B[:, c], rtol=1e-10, maxiter=500, callback=lambda xk, n=n: n.append(1))
        assert abs(info.iterations[c] - len(n)) <= 1


def test_label_spreading_matches_sklearn():
    sklearn_semi = pytest.importorskip("sklearn.semi_supervised")
    X, y = clustered(200, 8, c=3, spread=0.8)
    k, alpha = 10, 0.8
    g = build_graph(X, k=k)
    Xn = l2_normalize(X)
    S_ref, _ = brute_graph(X, k)
    W = S_ref * 0  # the un-normalised symmetric W from the same kNN lists
    C = Xn @ Xn.T
    np.fill_diagonal(C, -np.inf)
    for i in range(len(X)):
        nn = np.argsort(-C[i], kind="stable")[:k]
        W[i, nn] = C[i, nn]
    W = W + W.T
    np.fill_diagonal(W, 0)
    labels = np.full(len(X), -1)
    rng = np.random.default_rng(0)
    lab = rng.choice(len(X), 30, replace=False)
    labels[lab] = y[lab]
    ls = sklearn_semi.LabelSpreading(kernel=lambda a, b: W, alpha=alpha, max_iter=5000, tol=1e-12)
    ls.fit(X, labels)
    Y = np.zeros((len(X), 3))
    Y[lab, y[lab]] = 1
    Pstar, _ = propagate(g.S, Y, alpha, backend="numpy", tol=1e-12, maxiter=1000, clip_negative=False)
    ours = Pstar / np.maximum(Pstar.sum(1, keepdims=True), 1e-30)
    np.testing.assert_allclose(ours, ls.label_distributions_, atol=1e-5)


def test_propagation_errors_and_warning():
    X, _ = clustered(50, 6)
    g = build_graph(X, k=5)
    with pytest.raises(InputError):
        propagate(g.S, np.zeros((49, 3)))
    with pytest.raises(InputError):
        propagate(g.S, np.full((50, 3), np.nan))
    with pytest.raises(InputError):
        propagate(g.S, np.zeros((50, 3)), alpha=1.0)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        propagate(g.S, soft_labels(50, 3), 0.99, maxiter=2, backend="numpy")
    with pytest.raises(InputError):
        build_graph(np.full((10, 4), np.nan))
    with pytest.raises(InputError):
        build_graph(X, backend="annoy")


@pytest.mark.cuda
def test_cupy_backend_matches_numpy():
    if not cupy_available():
        pytest.skip("CuPy not installed or no GPU")
    X, _ = clustered(300, 10)
    g = build_graph(X, k=8)
    P = soft_labels(300, 4)
    a, _ = propagate(g.S, P, 0.9, backend="numpy")
    b, _ = propagate(g.S, P, 0.9, backend="cupy")
    np.testing.assert_allclose(a, b, atol=1e-6)
