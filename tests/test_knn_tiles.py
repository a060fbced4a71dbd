"""Tiled exact kNN over memory-mapped shards (issue 11) against a float64 brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tusss.errors import InputError
from tusss.glcc.knn import (
    RowBlocks,
    build_graph,
    faiss_gpu_available,
    faiss_sharded_search,
    knn_graph_torch,
    knn_tiled,
)


def brute(Q, X, k, exclude_self):
    Qn = Q.astype(np.float64) / np.linalg.norm(Q.astype(np.float64), axis=1, keepdims=True)
    Xn = X.astype(np.float64) / np.linalg.norm(X.astype(np.float64), axis=1, keepdims=True)
    C = Qn @ Xn.T
    if exclude_self:
        np.fill_diagonal(C, -np.inf)
    idx = np.argsort(-C, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(C, idx, 1), idx


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [37, 5, 64, 1, 50]
    out = []
    for j, n in enumerate(sizes):
        x = (rng.normal(size=(n, 24)) * rng.uniform(0.5, 3, (n, 1))).astype(np.float16)  # not normalised
        np.save(tmp_path / f"emb_{j}.npy", x)
        out.append(np.load(tmp_path / f"emb_{j}.npy", mmap_mode="r"))
    return out


@pytest.mark.parametrize("tiles", [(7, 13), (1000, 1000), (1, 11)])
@pytest.mark.parametrize("resident", [0, 1 << 30])
def test_tiled_graph_search_equals_brute_force(shards, tiles, resident):
    X = np.concatenate([np.asarray(s) for s in shards])
    k = 9
    s, i = knn_tiled(shards, k, row_tile=tiles[0], db_tile=tiles[1], device="cpu", resident_bytes=resident)
    rs, ri = brute(X, X, k, True)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(s, rs, atol=1e-5)
    assert (i != np.arange(len(X))[:, None]).all()


def test_tiled_queries_and_half_products(shards):
    X = np.concatenate([np.asarray(s) for s in shards])
    Q = np.random.default_rng(1).normal(size=(20, 24)).astype(np.float32)
    rs, ri = brute(Q, X, 6, False)
    s, i = knn_tiled(RowBlocks(shards), 6, queries=Q, row_tile=3, db_tile=17, device="cpu")
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(s, rs, atol=1e-5)
    # float16 products choose the neighbours, float32 recomputes their similarities (the GPU mode, on CPU)
    C = brute(Q, X, len(X), False)
    full = np.empty_like(C[0])
    np.put_along_axis(full, C[1], C[0], 1)  # full[r, j] = cos(Q_r, X_j)
    for resident in (0, 1 << 30):  # re-scoring from the host rows / from the resident float32 copy
        try:
            s16, i16 = knn_tiled(shards, 6, queries=Q, db_tile=17, device="cpu", half=True, resident_bytes=resident)
        except RuntimeError:  # pragma: no cover - a torch build without CPU half matmul
            pytest.skip("no float16 matmul on this CPU build")
        assert np.mean([len(np.intersect1d(a, b)) / 6 for a, b in zip(i16, ri)]) > 0.95
        np.testing.assert_allclose(s16, np.take_along_axis(full, i16, 1), atol=1e-5)
        assert (np.diff(s16, axis=1) <= 0).all()
    s16, i16 = knn_tiled(shards, 6, db_tile=17, row_tile=50, device="cpu", half=True, resident_bytes=1 << 30)
    assert (i16 != np.arange(len(X))[:, None]).all()


def test_self_removed_by_index_with_duplicates():
    rng = np.random.default_rng(2)
    X = np.repeat(rng.normal(size=(30, 8)).astype(np.float32), 2, axis=0)
    _, i = knn_tiled([X[:25], X[25:]], 3, row_tile=4, db_tile=9, device="cpu")
    assert (i != np.arange(60)[:, None]).all()
    assert all((i[r] == (r ^ 1)).any() for r in range(60))  # the twin is found, self is not


def test_build_graph_from_shards_equals_in_memory_graph(shards):
    X = np.concatenate([np.asarray(s, dtype=np.float32) for s in shards])
    g1 = build_graph(X, k=6)
    g2 = build_graph(RowBlocks(shards), k=6)
    np.testing.assert_allclose(g2.S.toarray(), g1.S.toarray(), atol=1e-6)
    np.testing.assert_allclose(g2.degree, g1.degree, rtol=1e-5)
    g3 = build_graph(X, k=6, backend="torch-tiled", db_tile=50, row_tile=20)
    np.testing.assert_allclose(g3.S.toarray(), g1.S.toarray(), atol=1e-6)


def test_rowblocks_rows_and_take(shards):
    X = np.concatenate([np.asarray(s) for s in shards])
    rb = RowBlocks(shards)
    np.testing.assert_array_equal(rb.rows(30, 110), X[30:110].astype(np.float32))
    idx = np.array([156, 0, 42, 41, 106, 3])
    np.testing.assert_array_equal(rb.take(idx), X[idx].astype(np.float32))


def test_errors(shards):
    with pytest.raises(InputError):
        knn_tiled(shards, 157)  # k > N - 1
    with pytest.raises(InputError):
        knn_tiled([np.zeros((3, 4), np.float32), np.ones((3, 5), np.float32)], 2)
    bad = [np.asarray(s, dtype=np.float32).copy() for s in shards]
    bad[2][5] = 0
    with pytest.raises(InputError, match="all-zero"):
        knn_tiled(bad, 3, device="cpu")
    bad[2][5] = np.nan
    with pytest.raises(InputError):
        knn_tiled(bad, 3, device="cpu")


@pytest.mark.cuda
def test_tiled_cuda_float16_matches_brute_force(shards):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    X = np.concatenate([np.asarray(s) for s in shards])
    s, i = knn_tiled(shards, 9, device="cuda", db_tile=40)
    rs, ri = brute(X, X, 9, True)
    assert np.mean([len(np.intersect1d(a, b)) / 9 for a, b in zip(i, ri)]) > 0.97
    np.testing.assert_allclose(s[:, 0], rs[:, 0], atol=2e-3)


@pytest.mark.cuda
def test_faiss_sharded_multi_gpu(shards):
    if not faiss_gpu_available():
        pytest.skip("faiss-gpu not installed or no GPU")
    X = np.concatenate([np.asarray(s) for s in shards])
    s, i = faiss_sharded_search(shards, 9, add_chunk=50)
    rs, ri = brute(X, X, 9, True)
    np.testing.assert_array_equal(i, ri)


def test_knn_graph_torch_equals_scipy_assembly():
    from tusss.glcc.knn import knn_graph

    rng = np.random.default_rng(4)
    X = rng.normal(size=(120, 10)).astype(np.float32)
    for gamma in (1.0, 3.0):
        s, i = knn_tiled(X, 7, device="cpu")
        i[5, 3] = -1  # a missing neighbour
        g = knn_graph(s, i, gamma=gamma)
        S, d = knn_graph_torch(torch.from_numpy(s), torch.from_numpy(i), gamma=gamma)
        np.testing.assert_allclose(S.to_dense().numpy(), g.S.toarray(), atol=1e-6)
        np.testing.assert_allclose(d.numpy(), g.degree, rtol=1e-5)


def test_l2_normalize_over_shards_equals_in_memory(shards, tmp_path):
    from tusss.glcc.knn import NpyRows, l2_normalize

    X = np.concatenate([np.asarray(s) for s in shards])
    ref = l2_normalize(X)
    files = [NpyRows(tmp_path / f"emb_{j}.npy") for j in range(len(shards))]
    assert files[2].shape == (64, 24) and files[2].dtype == np.float16
    for blocks in (shards, RowBlocks(files)):
        out = l2_normalize(blocks, chunk=16)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, ref)
    s1, i1 = knn_tiled(RowBlocks(files), 5, row_tile=9, db_tile=31, device="cpu")
    s2, i2 = knn_tiled(X, 5, device="cpu")
    np.testing.assert_array_equal(i1, i2)
