"""GLCC construction / inference timings on synthetic clustered embeddings (VOC scale by default).

Run (writes JSON, prints a summary)::

    nice python benchmarks/bench_glcc.py [--stages knn,lp,inductive] [--n 325000] [--graph-n 50000]
                                         [--out benchmarks/results/bench_glcc.json]

``--n`` (env ``TUSSS_BENCH_N``, default 325,000 = VOC's 324,921 masks) is the size of the training set used
for the CG solve and the inductive step; ``--graph-n`` the size at which the exact kNN backends are timed
(exact search is O(N²D): 325k takes minutes on a CPU). Stages (``--stages``, comma-separated):

- ``knn``: kNN graph (k = 50) at graph-n: exact torch-chunked and tiled (:func:`tusss.glcc.knn.knn_tiled`),
  faiss IVF / HNSW with recall@k against exact, faiss flat at ``--faiss-flat-n`` beside torch.
- ``fullgraph``: kNN graph at n with the approximate backend ``--full-graph`` (recall on 1,000 queries);
  the LP stage then solves on this graph instead of the synthetic one.
- ``lp``: Eq. 1, K = 21 columns, alpha 0.9, tol 1e-6, maxiter 200: the float32 torch block CG (the default
  solver), the float64 NumPy block CG (the previous solver) and the reference's per-class
  ``scipy.sparse.linalg.cg`` on the same matrix, in ONE run: ratios and max |difference| / max |P*|.
  Without ``fullgraph`` the graph is a synthetic kNN graph of the same shape (:func:`synthetic_knn_lists`:
  k = 50 neighbours per node inside sub-clusters of ~100 nodes, 2/3 of them reciprocal ring neighbours,
  assembled by the library's own ``knn_graph``), since an exact 325k graph costs ~15 min on 2 cores.
- ``inductive``: per image (40 masks): probe scores + Eq. 14-15 through ``GLCC.predict`` (warm index) against
  the previous path (a fresh search per call), torch exact search, 1 thread.

:func:`gpu_stages` (``gpu_stages(device, sizes) -> dict``) times kNN, graph assembly, LP and GLCC inference on
a device at the real sizes with synthetic data; ``gpu_stages("cpu", "tiny")`` is the dry run
(``--stages gpu --gpu-sizes tiny``). benchmarks/gpu_check.py calls it.

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
from tusss.glcc.knn import _drop_self, _faiss_index, knn_graph, knn_search, knn_tiled, recall_at_k
from tusss.glcc.probe import LinearProbe
from tusss.glcc.propagation import propagate

STAGES = ("knn", "fullgraph", "lp", "inductive", "gpu")


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


def synthetic_knn_lists(n: int, k: int = 50, n_sub: int | None = None, seed: int = 0
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kNN-shaped neighbour lists without an O(N²) search: nodes in shuffled order fall into sub-clusters
    of ~100; each takes 2k/3 ring neighbours (reciprocal, like most true kNN pairs) and k/3 random ones in
    its sub-cluster, similarities in (0.5, 0.9) decreasing along the list.

    Returns:
        sims (n, k) float32, idx (n, k) int64 (self-free), sub-cluster of each node (n,) int64.
    """
    rng = np.random.default_rng(seed)
    n_sub = n_sub or max(1, n // 108)
    cl = rng.integers(0, n_sub, n)
    order = np.argsort(cl, kind="stable")
    sizes = np.bincount(cl, minlength=n_sub)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pos = np.empty(n, np.int64)
    pos[order] = np.arange(n) - starts[cl[order]]
    h = (2 * k // 3) // 2
    off = np.concatenate([np.arange(1, h + 1), -np.arange(1, h + 1)])
    size = np.maximum(sizes[cl], 2)[:, None]
    ring = order[starts[cl][:, None] + (pos[:, None] + off[None, :]) % size]
    rnd = order[starts[cl][:, None] + (pos[:, None] + 1 + rng.integers(0, 1 << 30, (n, k - 2 * h)) % (size - 1))
                % size]
    idx = np.concatenate([ring, rnd], 1)
    idx = np.where(idx == np.arange(n)[:, None], (idx + 1) % n, idx)  # tiny sub-clusters: no self-loops
    sims = np.sort(rng.uniform(0.5, 0.9, idx.shape).astype(np.float32), 1)[:, ::-1].copy()
    return sims, idx.astype(np.int64), cl


def synthetic_knn_lists_torch(n: int, k: int = 50, device: str = "cpu", seed: int = 0):
    """:func:`synthetic_knn_lists` built with torch on ``device`` (same construction, other random draws):
    sims (n, k) float32, idx (n, k) int64 tensors and the (n,) sub-cluster tensor, in about a second at 4.66M."""
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(seed)
    n_sub = max(1, n // 108)
    cl = torch.randint(0, n_sub, (n,), generator=g, device=dev)
    order = torch.argsort(cl, stable=True)
    sizes = torch.bincount(cl, minlength=n_sub)
    starts = torch.cumsum(sizes, 0) - sizes
    pos = torch.empty(n, dtype=torch.int64, device=dev)
    pos[order] = torch.arange(n, device=dev) - starts[cl[order]]
    h = (2 * k // 3) // 2
    off = torch.cat([torch.arange(1, h + 1, device=dev), -torch.arange(1, h + 1, device=dev)])
    size = sizes[cl].clamp(min=2)[:, None]
    base = starts[cl][:, None]
    ring = order[base + (pos[:, None] + off[None, :]) % size]
    r = torch.randint(0, 1 << 30, (n, k - 2 * h), generator=g, device=dev)
    rnd = order[base + (pos[:, None] + 1 + r % (size - 1)) % size]
    idx = torch.cat([ring, rnd], 1)
    self_ = idx == torch.arange(n, device=dev)[:, None]
    idx = torch.where(self_, (idx + 1) % n, idx)
    sims = torch.sort(0.5 + 0.4 * torch.rand(n, k, generator=g, device=dev), dim=1, descending=True).values
    return sims, idx, cl


def noisy_labels(n: int, K: int, classes: np.ndarray, seed: int = 1) -> np.ndarray:
    """(n, K) float32 P^c: half of the rows carry one class (30 % of them wrong) with a random score."""
    rng = np.random.default_rng(seed)
    Pc = np.zeros((n, K), np.float32)
    noisy = np.where(rng.random(n) < 0.3, rng.integers(0, K, n), classes % K)
    keep = rng.random(n) < 0.5
    Pc[np.flatnonzero(keep), noisy[keep]] = rng.random(int(keep.sum())).astype(np.float32)
    return Pc


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def search_self(X, k, backend, **kw):
    s, i = knn_search(X, X, k + 1, backend=backend, **kw)
    return _drop_self(s, i, k)


def bench_lp(S: sp.csr_matrix, Pc: np.ndarray, alpha: float = 0.9, res: dict | None = None,
             numpy_block: bool = True, rounds: int = 1) -> dict:
    """Eq. 1 three ways on one matrix, in one run: torch float32 block CG, NumPy float64 block CG, and the
    reference's per-class SciPy CG (float64 CSR of I - alpha S, rtol 1e-6, maxiter 200).

    ``rounds`` > 1 alternates torch and per-class SciPy back to back that many times (the machine's load
    drifts over minutes on a shared host); the ratio reported is the median of the per-round ratios."""
    res = {} if res is None else res
    n, K = Pc.shape
    A = (sp.eye(n, format="csr") - alpha * S).tocsr()
    t_torch, t_cls, ratios, t_warm, ratios_warm = [], [], [], [], []
    from tusss.glcc.propagation import prepare_operator

    ws, wi, _ = synthetic_knn_lists(6000, 10)  # warm-up (MKL sparse / torch one-time initialisation)
    propagate(knn_graph(ws, wi).S, Pc[:6000], alpha, backend="torch", device="cpu")
    for r in range(rounds):
        (P_t, info_t), t_t = timed(propagate, S, Pc, alpha, backend="torch", device="cpu", clip_negative=False)
        op = prepare_operator(S, device="cpu")  # a later solve on the same graph (next round, alpha grid)
        _, t_w = timed(propagate, op, Pc, alpha, backend="torch", clip_negative=False)
        del op
        t0 = time.perf_counter()
        cols = [spla.cg(A, Pc[:, c].astype(np.float64), rtol=1e-6, maxiter=200)[0] for c in range(K)]
        t_c = time.perf_counter() - t0
        t_torch.append(t_t)
        t_cls.append(t_c)
        ratios.append(t_c / t_t)
        t_warm.append(t_w)
        ratios_warm.append(t_c / t_w)
        print(f"[{n} x {K}] round {r}: torch float32 block CG {t_t:.2f} s (prepare {info_t.seconds['prepare']:.2f} s "
              f"RCM + CSR; {info_t.spmm_calls} SpMM, {info_t.spmm_columns} columns), on a prepared graph {t_w:.2f} s;"
              f" per-class scipy CG {t_c:.2f} s -> {t_c / t_t:.1f}x / {t_c / t_w:.1f}x (load {os.getloadavg()[0]:.1f})")
    P_c = np.stack(cols, 1)
    scale = float(np.abs(P_c).max())
    t_t = float(np.median(t_torch))
    res.update({"lp_rounds": rounds, "lp_torch_s_rounds": t_torch, "lp_per_class_scipy_s_rounds": t_cls,
                "lp_speedup_rounds": ratios, "lp_speedup_torch_vs_per_class": float(np.median(ratios)),
                "lp_torch_prepared_s_rounds": t_warm, "lp_speedup_prepared_rounds": ratios_warm,
                "lp_speedup_prepared_vs_per_class": float(np.median(ratios_warm)),
                "lp_torch_s": t_t, "lp_per_class_scipy_s": float(np.median(t_cls)),
                "lp_torch_prepare_s": info_t.seconds["prepare"], "lp_torch_solve_s": info_t.seconds["solve"],
                "lp_torch_iterations": info_t.iterations.tolist(), "lp_torch_spmm_calls": info_t.spmm_calls,
                "lp_torch_spmm_columns": info_t.spmm_columns,
                "lp_max_abs_diff_rel": float(np.abs(P_t - P_c).max()) / scale,
                "lp_converged": bool(info_t.converged.all()), "lp_nnz": int(S.nnz)})
    if numpy_block:
        (P_b, info_b), t_b = timed(propagate, S, Pc, alpha, backend="numpy", clip_negative=False)
        t0 = time.perf_counter()
        [spla.cg(A, Pc[:, c].astype(np.float64), rtol=1e-6, maxiter=200)[0] for c in range(K)]
        t_c2 = time.perf_counter() - t0
        res.update({"lp_numpy_block_s": t_b, "lp_numpy_block_iterations_max": int(info_b.iterations.max()),
                    "lp_per_class_scipy_s_beside_numpy_block": t_c2,
                    "lp_speedup_numpy_block_vs_per_class": t_c2 / t_b})
        print(f"[{n} x {K}] numpy float64 block CG (previous solver) {t_b:.2f} s vs per-class scipy CG {t_c2:.2f} s"
              f" -> {t_c2 / t_b:.1f}x")
    print(f"[{n} x {K}] median over {rounds} round(s): torch block CG {res['lp_speedup_torch_vs_per_class']:.1f}x "
          f"faster than per-class scipy CG ({res['lp_speedup_prepared_vs_per_class']:.1f}x on a prepared graph); "
          f"max |torch - scipy| / max |P*| = {res['lp_max_abs_diff_rel']:.1e}")
    return res


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


GPU_SIZES = {
    "real": {"knn": [(325_000, 512, 50), (4_660_000, 512, 50)], "lp": [(325_000, 21, 50), (4_660_000, 81, 50)],
             "inductive": {"n_train": 325_000, "dim": 512, "K": 21, "images": 256, "masks": 40, "batch": 64}},
    "tiny": {"knn": [(3_000, 64, 10)], "lp": [(5_000, 21, 10)],
             "inductive": {"n_train": 4_000, "dim": 64, "K": 21, "images": 8, "masks": 40, "batch": 4}},
}


def gpu_stages(device: str = "cuda", sizes: str | dict = "real") -> dict:
    """``gpu_stages(device, sizes) -> dict``: time the GLCC stages on ``device`` with synthetic data.

    For benchmarks/gpu_check.py. ``sizes`` is "real" (kNN 325k x 512 and 4.66M x 512 with k 50; LP 325k x 21
    and 4.66M x 81; GLCC inference of 40-mask images against 325k training masks), "tiny" (the CPU dry run)
    or a dict shaped like ``GPU_SIZES["real"]`` (any key left out is skipped). Stages:

    - ``knn_{N}``: exact tiled kNN (:func:`tusss.glcc.knn.knn_tiled`, float16 products on CUDA, database
      resident on the device) of N random clustered unit vectors, self removed, k neighbours;
    - ``graph_{N}``: assembly of S on the device (:func:`tusss.glcc.knn.knn_graph_torch`) from kNN-shaped lists
      (:func:`synthetic_knn_lists_torch`, made on the device);
    - ``lp_{N}x{K}``: :func:`tusss.glcc.propagation.propagate_torch` (float32 block CG, tol 1e-6, maxiter 200);
    - ``inductive``: ``GLCC.predict_batch`` with a warm device index, ms per image at ``batch`` images per call.

    Returns:
        {"device": ..., "<stage>_s": seconds, ..., "inductive_ms_per_image": ...} (plus iteration counts).
    """
    from tusss.glcc.knn import knn_graph_torch
    from tusss.glcc.model import GLCC, GLCCConfig
    from tusss.glcc.propagation import propagate_torch

    cfg = GPU_SIZES[sizes] if isinstance(sizes, str) else sizes
    dev = torch.device(device)
    out: dict = {"device": str(dev), "sizes": sizes if isinstance(sizes, str) else "custom"}
    if dev.type == "cuda":
        out["device_name"] = torch.cuda.get_device_name(dev)
    g = torch.Generator(device=dev).manual_seed(0)

    def clustered(n: int, d: int) -> np.ndarray:
        c = torch.randn(max(8, n // 100), d, generator=g, device=dev)
        parts = []
        for a in range(0, n, 1 << 20):
            m = min(n, a + (1 << 20)) - a
            x = c[torch.randint(0, c.shape[0], (m,), generator=g, device=dev)]
            x = x + 1.2 * torch.randn(m, d, generator=g, device=dev)
            parts.append(torch.nn.functional.normalize(x, dim=1).half().cpu().numpy())
        return np.concatenate(parts)

    for n, d, k in cfg.get("knn", []):
        X = clustered(n, d)
        _sync(device)
        t0 = time.perf_counter()
        s, i = knn_tiled(X, k, device=str(dev), normalize=False)
        _sync(device)
        out[f"knn_{n}_s"] = time.perf_counter() - t0
        print(f"[gpu_stages {dev}] kNN {n} x {d}, k {k}: {out[f'knn_{n}_s']:.2f} s")
        del X, s, i
    for n, K, k in cfg.get("lp", []):
        st, it, cl = synthetic_knn_lists_torch(n, k, str(dev))
        Pc = noisy_labels(n, K, cl.cpu().numpy())
        _sync(device)
        t0 = time.perf_counter()
        S, _ = knn_graph_torch(st, it)
        _sync(device)
        out[f"graph_{n}_s"] = time.perf_counter() - t0
        B = torch.from_numpy(Pc).to(dev)
        _sync(device)
        t0 = time.perf_counter()
        _, info = propagate_torch(S, B, 0.9, tol=1e-6, maxiter=200)
        _sync(device)
        out[f"lp_{n}x{K}_s"] = time.perf_counter() - t0
        out[f"lp_{n}x{K}_iterations"] = int(info.iterations.max())
        print(f"[gpu_stages {dev}] graph {n}: {out[f'graph_{n}_s']:.2f} s; LP {n} x {K}: "
              f"{out[f'lp_{n}x{K}_s']:.3f} s ({out[f'lp_{n}x{K}_iterations']} iterations)")
        del S, B, st, it
    ind = cfg.get("inductive")
    if ind:
        N, D, K = ind["n_train"], ind["dim"], ind["K"]
        rng = np.random.default_rng(0)
        m = GLCC(GLCCConfig(k=50, knn_backend="torch"))
        m.X_ = clustered(N, D).astype(np.float32)
        m.degree_ = rng.uniform(20, 80, N)
        m.pstar_ = rng.random((N, K)).astype(np.float32)
        m.probe_ = LinearProbe(rng.normal(size=(K, D)).astype(np.float32))
        m.k_graph_, m.kind_, m.has_bg_ = 50, "weak", True
        m.knn_index(device=str(dev)).build()
        Q = clustered(ind["images"] * ind["masks"], D).astype(np.float32)
        imgs = np.split(Q, ind["images"])
        m.predict_batch(imgs[: ind["batch"]])  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for a in range(0, ind["images"], ind["batch"]):
            m.predict_batch(imgs[a:a + ind["batch"]])
        _sync(device)
        out["inductive_ms_per_image"] = 1000 * (time.perf_counter() - t0) / ind["images"]
        out["inductive_batch_images"] = ind["batch"]
        print(f"[gpu_stages {dev}] GLCC inference ({N} training masks): {out['inductive_ms_per_image']:.2f} ms / "
              f"image at {ind['batch']} images x {ind['masks']} masks per call")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="knn,lp,inductive", help=f"comma-separated subset of {STAGES}")
    ap.add_argument("--n", type=int, default=int(os.environ.get("TUSSS_BENCH_N", 325_000)))
    ap.add_argument("--graph-n", type=int, default=50_000)
    ap.add_argument("--faiss-flat-n", type=int, default=20_000, help="0 to skip faiss flat")
    ap.add_argument("--full-graph", default="faiss-ivf", choices=["faiss-ivf", "faiss-hnsw", "torch"])
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--K", type=int, default=21)
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--images", type=int, default=20, help="test images (40 masks each) for the inductive step")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--no-numpy-block", action="store_true", help="lp: skip the float64 NumPy block CG")
    ap.add_argument("--lp-rounds", type=int, default=3, help="lp: alternate torch / per-class scipy this many times")
    ap.add_argument("--gpu-device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--gpu-sizes", default="real", choices=sorted(GPU_SIZES))
    ap.add_argument("--out", default="benchmarks/results/bench_glcc.json")
    args = ap.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    bad = set(stages) - set(STAGES)
    if bad:
        ap.error(f"unknown stages {sorted(bad)}; choose from {STAGES}")
    if args.threads:
        torch.set_num_threads(args.threads)
    res: dict = {"stages": stages, "n": args.n, "graph_n": args.graph_n, "k": args.k, "K": args.K, "dim": 512,
                 "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                 "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(),
                 "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    k = args.k
    X = y = g = index = None
    if {"knn", "fullgraph", "inductive"} & set(stages):
        X, y = synth(args.n, K=args.K)
        print(f"data: {X.shape}")

    if "knn" in stages:  # exact / approximate graph at graph-n
        Xg = np.ascontiguousarray(X[: args.graph_n])
        (s_ex, i_ex), t = timed(search_self, Xg, k, "torch")
        res["graph_n_torch_exact_knn_s"] = t
        (s_tl, i_tl), t_tl = timed(knn_tiled, Xg.astype(np.float16), k, device="cpu")
        res["graph_n_torch_tiled_fp16_store_knn_s"] = t_tl
        res["graph_n_tiled_recall_vs_exact"] = recall_at_k(i_tl, i_ex)
        _, t_asm = timed(knn_graph, s_ex, i_ex)
        res["graph_n_sparse_assembly_s"] = t_asm
        print(f"[{args.graph_n}] torch exact kNN {t:.1f} s, tiled from a float16 store {t_tl:.1f} s (recall "
              f"{res['graph_n_tiled_recall_vs_exact']:.4f}), sparse assembly {t_asm:.1f} s")
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

    if "fullgraph" in stages:  # graph at full n (approximate; index kept for the inductive step)
        t0 = time.perf_counter()
        if args.full_graph != "torch":
            index = _faiss_index(X, args.full_graph, None, args.nprobe, 32, 128)
        s_f, i_f = search_self(X, k, args.full_graph, index=index)
        g = knn_graph(s_f, i_f)
        t = time.perf_counter() - t0
        res[f"full_{args.full_graph}_graph_s"] = t
        sample = np.random.default_rng(1).choice(args.n, 1000, replace=False)
        _, i_s = knn_search(X[sample], X, k + 1, backend="torch")
        ex = np.array([row[row != q][:k] for row, q in zip(i_s, sample)])
        res[f"full_{args.full_graph}_recall_sample"] = recall_at_k(i_f[sample], ex)
        print(f"[{args.n}] {args.full_graph} graph {t:.1f} s (index + search + assembly), nnz {g.S.nnz}, "
              f"recall@{k} on 1000 queries {res[f'full_{args.full_graph}_recall_sample']:.4f}")

    Pstar = degree = None
    if "lp" in stages:  # Eq. 1: torch float32 block CG vs float64 block CG vs per-class scipy CG
        if g is None:
            (sims, idx, cl), t = timed(synthetic_knn_lists, args.n, k)
            gl = knn_graph(sims, idx)
            res["lp_graph"] = "synthetic_knn_lists"
            classes = np.random.default_rng(3).integers(0, args.K, cl.max() + 1)[cl]
        else:
            gl, classes = g, y
            res["lp_graph"] = f"full_{args.full_graph}"
        Pc = noisy_labels(args.n, args.K, classes)
        bench_lp(gl.S, Pc, 0.9, res, numpy_block=not args.no_numpy_block, rounds=args.lp_rounds)
        if g is not None:
            Pstar, degree = propagate(g.S, Pc, 0.9)[0], g.degree

    if "inductive" in stages:  # per image (40 masks): GLCC.predict with a warm index vs a fresh search per call
        from tusss.glcc.model import GLCC, GLCCConfig

        rng = np.random.default_rng(2)
        probe = LinearProbe(rng.normal(size=(args.K, 512)).astype(np.float32))
        if Pstar is None:
            Pstar, degree = rng.random((args.n, args.K)).astype(np.float32), rng.uniform(20, 80, args.n)
        Q = synth(args.images * 40, K=args.K, seed=9)[0]
        torch.set_num_threads(1)  # 40-query batches: one thread avoids OpenMP spin-waits on a shared CPU
        res["inductive_torch_threads"] = 1
        t0 = time.perf_counter()
        for j in range(args.images):
            q = Q[j * 40:(j + 1) * 40]
            probe.scores(q)
            inductive_bias(q, X, degree, Pstar, k, k, backend="torch")
        res["inductive_fresh_search_ms_per_image"] = 1000 * (time.perf_counter() - t0) / args.images
        m = GLCC(GLCCConfig(k=k, knn_backend="torch"))
        m.X_, m.degree_, m.pstar_, m.probe_, m.k_graph_, m.kind_ = X, degree, Pstar, probe, k, "weak"
        m.knn_index(device="cpu").build()
        t0 = time.perf_counter()
        for j in range(args.images):
            m.predict(Q[j * 40:(j + 1) * 40])
        res["inductive_glcc_predict_ms_per_image"] = 1000 * (time.perf_counter() - t0) / args.images
        t0 = time.perf_counter()
        m.predict_batch(np.split(Q, args.images))
        res["inductive_glcc_predict_batch_ms_per_image"] = 1000 * (time.perf_counter() - t0) / args.images
        print(f"[{args.n}] inductive + probe per image (40 masks): fresh search "
              f"{res['inductive_fresh_search_ms_per_image']:.1f} ms, GLCC.predict (warm) "
              f"{res['inductive_glcc_predict_ms_per_image']:.1f} ms, predict_batch of {args.images} images "
              f"{res['inductive_glcc_predict_batch_ms_per_image']:.1f} ms")
        if index is not None:
            t0 = time.perf_counter()
            for j in range(args.images):
                q = Q[j * 40:(j + 1) * 40]
                probe.scores(q)
                inductive_bias(q, X, degree, Pstar, k, k, backend=args.full_graph, index=index)
            res[f"inductive_{args.full_graph}_ms_per_image"] = 1000 * (time.perf_counter() - t0) / args.images

    if "gpu" in stages:
        res["gpu_stages"] = gpu_stages(args.gpu_device, args.gpu_sizes)

    res["loadavg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
