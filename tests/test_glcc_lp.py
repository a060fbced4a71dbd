"""The float32 torch block CG (issue 12) against float64 dense solves, per-class SciPy CG and the float64
block CG; RCM reordering against SciPy's fancy indexing; the solver inside GLCC.fit (counted)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from tusss.errors import InputError
from tusss.glcc import propagation
from tusss.glcc.knn import build_graph
from tusss.glcc.propagation import permute_symmetric, propagate, rcm_permutation


def normalized(W: sp.spmatrix) -> sp.csr_matrix:
    W = sp.csr_matrix(W + W.T)
    W.setdiag(0)
    W.eliminate_zeros()
    d = np.asarray(W.sum(1)).ravel()
    d[d == 0] = 1
    r = sp.diags(1 / np.sqrt(d))
    return sp.csr_matrix(r @ W @ r)


def knn_graph_S(n=400, d=12, k=10, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(6, d))[rng.integers(0, 6, n)] + 0.7 * rng.normal(size=(n, d))
    return build_graph(X.astype(np.float32), k=k).S


def random_graph_S(n=500, seed=1):
    return normalized(sp.random(n, n, density=0.02, random_state=seed, data_rvs=np.random.default_rng(seed).random))


def fast_and_slow_S(n_clique=60, n_path=600):
    """A dense clique (CG converges in a few steps) beside a long weighted path (hundreds of steps),
    shuffled so that RCM has work to do."""
    C = np.ones((n_clique, n_clique))
    P = sp.diags([np.ones(n_path - 1)], [1], shape=(n_path, n_path))
    W = sp.block_diag([sp.csr_matrix(C), P]).tocsr()
    perm = np.random.default_rng(0).permutation(W.shape[0])
    return normalized(W[perm][:, perm]), perm, n_clique


def labels(n, K, seed=2, density=0.3):
    rng = np.random.default_rng(seed)
    Y = rng.random((n, K)) * (rng.random((n, K)) < density)
    Y[:, -1] = 0  # an all-zero column converges at once
    return Y


def dense_solve(S, Y, alpha):
    return np.linalg.solve(np.eye(S.shape[0]) - alpha * S.toarray(), Y)


def scipy_per_class(S, Y, alpha, tol=1e-6, maxiter=200):
    A = sp.eye(S.shape[0], format="csr") - alpha * S
    its = []
    cols = []
    for c in range(Y.shape[1]):
        n = []
        cols.append(spla.cg(A, Y[:, c], rtol=tol, maxiter=maxiter, callback=lambda xk, n=n: n.append(1))[0])
        its.append(len(n))
    return np.stack(cols, 1), np.array(its)


@pytest.mark.parametrize("graph", ["knn", "random", "fast_and_slow"])
@pytest.mark.parametrize("reorder", ["rcm", None])
def test_float32_torch_within_1e4_of_float64_solves(graph, reorder):
    if graph == "knn":
        S, alpha = knn_graph_S(), 0.9
    elif graph == "random":
        S, alpha = random_graph_S(), 0.95
    else:
        S, alpha = fast_and_slow_S()[0], 0.99
    Y = labels(S.shape[0], 5)
    P, info = propagate(S, Y, alpha, backend="torch", device="cpu", reorder=reorder, clip_negative=False,
                        maxiter=1000)
    assert P.dtype == np.float32 and info.backend == "torch:cpu" and info.converged.all()
    ref = dense_solve(S, Y, alpha)
    scale = np.abs(ref).max()
    assert np.abs(P - ref).max() <= 1e-4 * scale
    cg, _ = scipy_per_class(S, Y, alpha, maxiter=1000)
    assert np.abs(P - cg).max() <= 1e-4 * scale
    assert info.spmm_calls == info.iterations.max()


def test_columns_converging_long_before_others_are_frozen():
    S, perm, n_clique = fast_and_slow_S()
    inv = np.argsort(perm)  # original node -> shuffled position
    N, alpha = S.shape[0], 0.99
    Y = np.zeros((N, 4))
    Y[inv[:n_clique], 0] = 1.0                    # only on the clique: converges in a few steps
    Y[inv[n_clique + 5], 1] = 1.0                 # one node of the path: long
    Y[inv[[3, n_clique + 300]], 2] = [2.0, 0.5]   # both components
    P, info = propagate(S, Y, alpha, backend="torch", device="cpu", clip_negative=False, maxiter=1000)
    ref = dense_solve(S, Y, alpha)
    assert np.abs(P - ref).max() <= 1e-4 * np.abs(ref).max()
    its = info.iterations
    assert its[3] == 0 and its[0] <= 5 and its[1] >= 50 and its[2] >= 50, its
    # frozen columns leave the block: the SpMMs multiplied far fewer than K columns each time
    assert info.spmm_columns == its.sum() < 4 * info.spmm_calls
    # each column took as many iterations as its own scalar SciPy CG (float32 rounding: within 2)
    _, its_ref = scipy_per_class(S, Y, alpha, maxiter=1000)
    assert np.abs(its - its_ref).max() <= 2, (its, its_ref)


def test_torch_float64_follows_numpy_block_cg_iterates():
    """Same recurrences: in float64 the torch solver (with compaction) matches the NumPy block CG exactly."""
    S = fast_and_slow_S()[0]
    Y = labels(S.shape[0], 6, seed=5, density=0.05)
    Y[:, 2] *= 1e-3
    a, ia = propagate(S, Y, 0.99, backend="numpy", clip_negative=False, maxiter=1000)
    b, ib = propagate(S, Y, 0.99, backend="torch", device="cpu", dtype=np.float64, reorder=None,
                      clip_negative=False, maxiter=1000)
    np.testing.assert_array_equal(ia.iterations, ib.iterations)
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7 * np.abs(a).max())


def test_not_converged_warns_and_clip():
    S = knn_graph_S(200)
    Y = labels(200, 3)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        _, info = propagate(S, Y, 0.99, maxiter=2, backend="torch", device="cpu")
    assert not info.converged[:2].any() and info.converged[2]
    P, _ = propagate(S, Y - 0.05, 0.9, backend="torch", device="cpu")
    assert P.min() >= 0


def test_rcm_permutation_and_fast_permute():
    S, _, _ = fast_and_slow_S(30, 200)
    p = rcm_permutation(S)
    assert np.array_equal(np.sort(p), np.arange(S.shape[0]))
    T = permute_symmetric(S, p)
    np.testing.assert_array_equal(T.toarray(), S[p][:, p].toarray())
    assert T.indices.dtype == np.int32 and T.dtype == S.dtype
    for rows, workers in ((1, 1), (7, 3), (S.shape[0] - 1, 2)):  # block by block, threads; a partial last block
        T32 = permute_symmetric(S, p, np.float32, rows_per_block=rows, workers=workers)
        assert T32.dtype == np.float32
        np.testing.assert_array_equal(T32.toarray(), S[p][:, p].toarray().astype(np.float32))
    with pytest.raises(InputError, match="perm"):
        permute_symmetric(S, p[:-1])

    def bandwidth(M):
        M = M.tocoo()
        return int(np.abs(M.row - M.col).max())

    assert bandwidth(T) < bandwidth(S) / 4


def test_glcc_fit_runs_the_torch_solver(monkeypatch):
    from tusss.glcc.model import GLCC, GLCCConfig
    from tusss.glcc.probe import ProbeConfig
    from tusss.supervision import Supervision, group_offsets

    calls = []
    real = propagation.block_cg_torch

    def counting(*a, **kw):
        calls.append(a[1].shape)
        return real(*a, **kw)

    monkeypatch.setattr(propagation, "block_cg_torch", counting)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8)).astype(np.float32)
    ids = np.arange(120) // 6
    Pc = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 120)]
    off = group_offsets(ids)
    sup = Supervision("weak", Pc, off, [None] * (len(off) - 1), np.zeros(120, bool), None, has_bg=False)
    GLCC(GLCCConfig(k=5, rounds=2, probe=ProbeConfig(iters=20))).fit(X, None, ids, sup)
    assert calls == [(120, 3), (120, 3)]  # one block solve per bootstrap round


def test_bad_arguments():
    from tusss.errors import InputError

    S = knn_graph_S(50)
    with pytest.raises(InputError, match="backend"):
        propagate(S, np.zeros((50, 2)), backend="jax")
    with pytest.raises(InputError, match="reorder"):
        propagate(S, np.zeros((50, 2)), reorder="amd")
    with pytest.raises(InputError, match="dtype"):
        propagate(S, np.zeros((50, 2)), backend="torch", dtype=np.float16)


@pytest.mark.cuda
def test_torch_cuda_matches_float64():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    S = knn_graph_S(2000, k=15)
    Y = labels(2000, 7)
    P, info = propagate(S, Y, 0.9, backend="torch", device="cuda", clip_negative=False)
    assert info.backend == "torch:cuda"
    ref = dense_solve(S, Y, 0.9)
    assert np.abs(P - ref).max() <= 1e-4 * np.abs(ref).max()


def test_bench_gpu_stages_dry_run():
    """benchmarks/bench_glcc.gpu_stages at tiny sizes on the CPU (the GPU check's dry run) yields every figure."""
    import importlib.util
    from pathlib import Path

    p = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_glcc.py"
    spec = importlib.util.spec_from_file_location("bench_glcc_for_test", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    s, i, _ = mod.synthetic_knn_lists_torch(3000, 12)
    assert (i != torch.arange(3000)[:, None]).all() and int(i.min()) >= 0 and int(i.max()) < 3000
    r = mod.gpu_stages("cpu", {"knn": [(400, 16, 5)], "lp": [(600, 3, 8)],
                               "inductive": {"n_train": 300, "dim": 16, "K": 3, "images": 4, "masks": 5, "batch": 2}})
    for key in ("knn_400_s", "graph_600_s", "lp_600x3_s", "inductive_ms_per_image"):
        assert np.isfinite(r[key]) and r[key] > 0, key
    assert r["lp_600x3_iterations"] > 0


def test_graph_caches_the_prepared_operator(monkeypatch):
    """A KnnGraph prepares (reorders, converts) once; later solves on it reuse the operator."""
    g = build_graph(np.random.default_rng(7).normal(size=(5000, 8)).astype(np.float32), k=6)
    made = []
    real = propagation.prepare_operator
    monkeypatch.setattr(propagation, "prepare_operator", lambda *a, **kw: made.append(1) or real(*a, **kw))
    Y = labels(5000, 3)
    P1, i1 = propagate(g, Y, 0.9, device="cpu")
    P2, i2 = propagate(g, Y * 2, 0.8, device="cpu")
    assert len(made) == 1 and g.lp_operator(device="cpu").perm is not None  # N > 4096: RCM on the CPU
    ref1, _ = propagate(g.S, Y, 0.9, backend="numpy")
    ref2, _ = propagate(g.S, Y * 2, 0.8, backend="numpy")
    np.testing.assert_allclose(P1, ref1, atol=1e-4 * np.abs(ref1).max())
    np.testing.assert_allclose(P2, ref2, atol=1e-4 * np.abs(ref2).max())


@pytest.mark.parametrize("row_chunk", [37, 100000])
def test_block_cg_torch_row_blocks_follow_numpy_block_cg(row_chunk):
    """The vector updates over row blocks (the CPU default: 8192 rows) give the float64 NumPy iterates."""
    from tusss.glcc.propagation import block_cg, block_cg_torch

    S = fast_and_slow_S()[0]
    A = (sp.eye(S.shape[0]) - 0.99 * S).tocsr()
    Y = labels(S.shape[0], 5, seed=6, density=0.05)
    ref, iref = block_cg(lambda V: A @ V, Y, tol=1e-8, maxiter=1000)
    At = torch.from_numpy(A.toarray())
    X, info = block_cg_torch(lambda V: At @ V, torch.from_numpy(Y), tol=1e-8, maxiter=1000, row_chunk=row_chunk)
    np.testing.assert_array_equal(info.iterations, iref.iterations)
    np.testing.assert_allclose(X.numpy(), ref, rtol=1e-7, atol=1e-9 * np.abs(ref).max())


def test_tiny_and_huge_columns_keep_their_accuracy():
    """float32 would underflow a column of 1e-25 scores (its squared norm is 0 in float32) or overflow 1e20:
    each column is solved at unit norm, so each keeps the 1e-4 accuracy relative to its own max."""
    S = knn_graph_S(300)
    Y = labels(300, 4)
    Y[:, 1] *= 1e-25
    Y[:, 2] *= 1e20
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error", RuntimeWarning)
        P, info = propagate(S, Y, 0.9, backend="torch", device="cpu", clip_negative=False)
    ref = dense_solve(S, Y, 0.9)
    assert info.converged.all()
    for c in range(3):
        assert np.abs(P[:, c] - ref[:, c]).max() <= 1e-4 * np.abs(ref[:, c]).max(), c


@pytest.mark.parametrize("reorder", [None, "rcm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_caller_labels_untouched_and_any_input_dtype(reorder, dtype):
    """The wrapper scales the right-hand sides in place on its own copy only: the caller's P^c is unchanged,
    whatever its dtype and whether the rows are reordered; float32 and float64 P^c give the same P*."""
    S = knn_graph_S(300)
    Y = labels(300, 4).astype(dtype)
    keep = Y.copy()
    P, info = propagate(S, Y, 0.9, backend="torch", device="cpu", reorder=reorder, clip_negative=False)
    np.testing.assert_array_equal(Y, keep)
    ref = dense_solve(S, Y.astype(np.float64), 0.9)
    assert info.converged.all() and P.dtype == np.float32
    assert np.abs(P - ref).max() <= 1e-4 * np.abs(ref).max()
