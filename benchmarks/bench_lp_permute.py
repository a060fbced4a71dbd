"""The RCM permutation of the label-propagation graph, warm and after a pause (issue 12 follow-up).

Run::

    python benchmarks/bench_lp_permute.py [--n 325000] [--rounds 4] [--pause 3] \\
        [--out benchmarks/results/lp_permute.json]

Times, on the same kNN-shaped graph as ``bench_glcc.py --stages lp``, three ways of computing ``S[p][:, p]`` as a
float32 CSR matrix with int32 indices:

- ``whole``: the previous code, whole-matrix NumPy / SciPy steps (float32 copy, SciPy row gather, relabelled
  indices): every output array is a fresh NumPy allocation;
- ``blocks-1``: :func:`tusss.glcc.propagation.permute_symmetric` with one thread (block by block into arrays
  allocated once by torch);
- ``blocks``: the same with torch's intra-op thread count (the default).

Each is timed right after another one ("warm") and after ``--pause`` seconds of per-class SciPy CG on another
matrix (the benchmark's baseline work, which allocates little: the situation of the LP benchmark's cold solve).
All three results are checked equal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_glcc import synthetic_knn_lists  # noqa: E402

from tusss.glcc.knn import knn_graph  # noqa: E402
from tusss.glcc.propagation import permute_symmetric, rcm_permutation  # noqa: E402


def whole(S: sp.csr_matrix, p: np.ndarray) -> sp.csr_matrix:
    """The previous permutation: whole-matrix float32 copy, SciPy row gather, relabelled index array."""
    inv = np.empty(S.shape[0], np.int32)
    inv[p] = np.arange(S.shape[0], dtype=np.int32)
    T = S.astype(np.float32)[p]
    T.indices = inv[T.indices]
    return T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=325_000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--pause", type=float, default=3.0, help="seconds of SciPy CG before each 'after a pause' time")
    ap.add_argument("--out", default="benchmarks/results/lp_permute.json")
    args = ap.parse_args()
    sims, idx, _ = synthetic_knn_lists(args.n, args.k)
    S = knn_graph(sims, idx).S.tocsr()
    A = (sp.eye(args.n, format="csr") - 0.9 * S).tocsr()
    b = np.random.default_rng(0).random(args.n)
    p = rcm_permutation(S)
    ways = {"whole": lambda: whole(S, p), "blocks-1": lambda: permute_symmetric(S, p, np.float32, workers=1),
            "blocks": lambda: permute_symmetric(S, p, np.float32)}
    ref = whole(S, p)
    res: dict = {"n": args.n, "k": args.k, "nnz": int(S.nnz), "torch_threads": torch.get_num_threads(),
                 "pause_s": args.pause, "loadavg_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(args.rounds):
        for name, fn in ways.items():
            t = time.perf_counter()
            while time.perf_counter() - t < args.pause:
                spla.cg(A, b, rtol=1e-6, maxiter=200)
            t = time.perf_counter()
            T = fn()
            res.setdefault(f"{name}_after_pause_s", []).append(time.perf_counter() - t)
            assert (T.indptr == ref.indptr).all() and (T.indices == ref.indices).all() and (T.data == ref.data).all()
            del T
            t = time.perf_counter()
            T = fn()
            res.setdefault(f"{name}_warm_s", []).append(time.perf_counter() - t)
            del T
    for name in ways:
        for when in ("warm", "after_pause"):
            v = res[f"{name}_{when}_s"]
            print(f"{name:9s} {when:12s} median {np.median(v):.3f} s  (min {min(v):.3f}, max {max(v):.3f})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
