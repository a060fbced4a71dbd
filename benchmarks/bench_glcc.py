"""GLCC construction / inference timings on synthetic clustered embeddings (VOC scale by default).

Run (writes JSON, prints a summary)::

    nice python benchmarks/bench_glcc.py [--n 325000] [--graph-n 50000] [--out benchmarks/results/bench_glcc.json]

``--n`` (env ``TUSSS_BENCH_N``, default 325,000 = VOC's 324,921 masks) is the size of the training set used
for the CG solve and the inductive step; ``--graph-n`` the size at which the exact kNN backends are timed
(exact search is O(N²D): 325k takes minutes on a CPU). Measured:

1. kNN graph (k = 50) at graph-n: exact torch-chunked, faiss IVF / HNSW with recall@k against exact, and
   faiss flat (exact) at ``--faiss-flat-n`` beside torch at the same size (their ratio).
2. kNN graph at n with the approximate backend ``--full-graph`` (recall on a 1,000-query sample).
3. Eq. 1 solve, K = 21 columns, alpha 0.9, tol 1e-6, maxiter 200: block CG (one SpMM per iteration) vs
   the reference's per-class scipy.sparse.linalg.cg on the same matrix, ratio and max difference.
4. Inductive step per image (40 masks): probe scores + Eq. 14-15 with torch exact search (1 thread) and
   the approximate faiss index of step 2 over the n training embeddings (ms / image).

Paper figures (RTX 3090, Table S4): graph 4 s, LP < 1 s, 3.1 ms / image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from tusss.glcc.inductive import inductive_bias
from tusss.glcc.knn import _drop_self, _faiss_index, knn_graph, knn_search, recall_at_k
from tusss.glcc.probe import LinearProbe
from tusss.glcc.propagation import propagate


def synth(n: int, d: int = 512, K: int = 21, n_sub: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around n_sub sub-cluster centres (each of one of K classes), CLIP-like spread."""
    rng = np.random.default_rng(seed)
    cls_c = rng.normal(size=(K, d)).astype(np.float32)
    sub_cls = rng.integers(0, K, n_sub)
    sub_c = cls_c[sub_cls] + 1.0 * rng.normal(size=(n_sub, d)).astype(np.float32)
    comp = rng.integers(0, n_sub, n)
    X = np.empty((n, d), np.float32)
    for a in range(0, n, 65536):
        c = comp[a:a + 65536]
        X[a:a + 65536] = sub_c[c] + 1.2 * rng.normal(size=(len(c), d)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, sub_cls[comp]


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def search_self(X, k, backend, **kw):
    s, i = knn_search(X, X, k + 1, backend=backend, **kw)
    return _drop_self(s, i, k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=int(os.environ.get("TUSSS_BENCH_N", 325_000)))
    ap.add_argument("--graph-n", type=int, default=50_000)
    ap.add_argument("--faiss-flat-n", type=int, default=20_000, help="0 to skip faiss flat")
    ap.add_argument("--full-graph", default="faiss-ivf", choices=["faiss-ivf", "faiss-hnsw", "torch"])
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--K", type=int, default=21)
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--images", type=int, default=20, help="test images (40 masks each) for the inductive step")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the kNN search (0: torch default)")
    ap.add_argument("--out", default="benchmarks/results/bench_glcc.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    res: dict = {"n": args.n, "graph_n": args.graph_n, "k": args.k, "K": args.K, "dim": 512,
                 "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                 "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    k = args.k
    X, y = synth(args.n, K=args.K)
    print(f"data: {X.shape}")

    # 1. exact / approximate graph at graph-n
    Xg = np.ascontiguousarray(X[: args.graph_n])
    (s_ex, i_ex), t = timed(search_self, Xg, k, "torch")
    res["graph_n_torch_exact_knn_s"] = t
    _, t_asm = timed(knn_graph, s_ex, i_ex)
    res["graph_n_sparse_assembly_s"] = t_asm
    print(f"[{args.graph_n}] torch exact kNN {t:.1f} s, sparse assembly {t_asm:.1f} s")
    for be in ("faiss-ivf", "faiss-hnsw"):
        (s_a, i_a), t = timed(search_self, Xg, k, be, nprobe=args.nprobe)
        r = recall_at_k(i_a, i_ex)
        res[f"graph_n_{be}_knn_s"], res[f"graph_n_{be}_recall"] = t, r
        print(f"[{args.graph_n}] {be} {t:.1f} s recall@{k} {r:.4f}")
    if args.faiss_flat_n:
        Xf = np.ascontiguousarray(X[: args.faiss_flat_n])
        _, t_f = timed(search_self, Xf, k, "faiss")
        _, t_t = timed(search_self, Xf, k, "torch")
        res.update({"flat_n": args.faiss_flat_n, "flat_n_faiss_flat_s": t_f, "flat_n_torch_s": t_t,
                    "faiss_flat_over_torch": t_f / t_t})
        print(f"[{args.faiss_flat_n}] faiss flat {t_f:.1f} s vs torch {t_t:.1f} s: ratio {t_f / t_t:.2f}")

    # 2. graph at full n (approximate; the index is kept for the inductive step), recall on a sample
    t0 = time.perf_counter()
    index = None
    if args.full_graph != "torch":
        index = _faiss_index(X, args.full_graph, None, args.nprobe, 32, 128)
    s_f, i_f = search_self(X, k, args.full_graph, index=index)
    g = knn_graph(s_f, i_f)
    t = time.perf_counter() - t0
    res[f"full_{args.full_graph}_graph_s"] = t
    rng = np.random.default_rng(1)
    sample = rng.choice(args.n, 1000, replace=False)
    _, i_s = knn_search(X[sample], X, k + 1, backend="torch")
    ex = np.array([row[row != q][:k] for row, q in zip(i_s, sample)])
    res[f"full_{args.full_graph}_recall_sample"] = recall_at_k(i_f[sample], ex)
    print(f"[{args.n}] {args.full_graph} graph {t:.1f} s (index + search + assembly), nnz {g.S.nnz}, "
          f"recall@{k} on 1000 queries {res[f'full_{args.full_graph}_recall_sample']:.4f}")

    # 3. Eq. 1: block CG vs per-class scipy CG
    Pc = np.zeros((args.n, args.K), np.float32)
    noisy = np.where(rng.random(args.n) < 0.3, rng.integers(0, args.K, args.n), y)
    keep = rng.random(args.n) < 0.5
    Pc[np.flatnonzero(keep), noisy[keep]] = rng.random(keep.sum()).astype(np.float32)
    (P_blk, info), t_blk = timed(propagate, g.S, Pc, 0.9, backend="numpy", clip_negative=False)
    A = (sp.eye(args.n, format="csr") - 0.9 * g.S).tocsr()
    t0 = time.perf_counter()
    cols = [spla.cg(A, Pc[:, c].astype(np.float64), rtol=1e-6, maxiter=200)[0] for c in range(args.K)]
    t_col = time.perf_counter() - t0
    P_col = np.stack(cols, 1)
    res.update({"cg_block_s": t_blk, "cg_per_column_scipy_s": t_col, "cg_speedup": t_col / t_blk,
                "cg_iterations_max": int(info.iterations.max()), "cg_spmm_calls": info.spmm_calls,
                "cg_max_abs_diff": float(np.abs(P_blk - P_col).max()), "cg_converged": bool(info.converged.all())})
    print(f"[{args.n}] block CG {t_blk:.2f} s ({info.spmm_calls} SpMM) vs per-column scipy CG {t_col:.2f} s: "
          f"{t_col / t_blk:.1f}x, max |diff| {res['cg_max_abs_diff']:.2e}")

    # 4. inductive step per image (40 masks)
    probe = LinearProbe(np.random.default_rng(2).normal(size=(args.K, 512)).astype(np.float32))
    Pstar = np.maximum(P_blk, 0)
    Q = synth(args.images * 40, K=args.K, seed=9)[0]
    torch.set_num_threads(1)  # 40-query batches: one thread avoids OpenMP spin-waits on a shared CPU
    res["inductive_torch_threads"] = 1
    runs = [("torch", {})]
    if index is not None:
        runs.append((args.full_graph, {"index": index}))
    for be, kw in runs:
        t0 = time.perf_counter()
        for j in range(args.images):
            q = Q[j * 40:(j + 1) * 40]
            probe.scores(q)
            inductive_bias(q, X, g.degree, Pstar, k, k, backend=be, **kw)
        ms = 1000 * (time.perf_counter() - t0) / args.images
        res[f"inductive_{be}_ms_per_image"] = ms
        print(f"[{args.n}] inductive + probe, {be}: {ms:.1f} ms / image (40 masks)")

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
