"""GLCC inference per image through tusss.Predictor's classifier: warm kNN index vs rebuild-per-call.

One "image" = 30 mask embeddings (D = 512) classified by a GLCC whose training set is N x 512 (default
N = 325 000, the size of a VOC-scale training store) with K = 21 classes. Both paths run the same code
(:class:`tusss.classify.GLCCClassifier` -> ``GLCC.predict``); the rebuild path drops the GLCC's kNN index before
every call (what ``GLCC.predict`` did before the index was kept warm: torch backend = the training set turned
into a tensor (uploaded to the GPU there), faiss = index built / trained and filled). Same queries, same
process, interleaved, outputs compared.

    python benchmarks/bench_predictor.py [--n 325000] [--backends torch,faiss,faiss-ivf] [--warm 20] [--cold 3]

Writes benchmarks/results/bench_predictor.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def fitted_glcc(n: int, d: int, k_classes: int, backend: str, seed: int = 0):
    """A GLCC in fitted state with synthetic arrays (fitting on 325k masks is not what is measured here)."""
    from tusss.glcc.knn import l2_normalize
    from tusss.glcc.model import GLCC, GLCCConfig
    from tusss.glcc.probe import LinearProbe

    rng = np.random.default_rng(seed)
    g = GLCC(GLCCConfig(k=50, knn_backend=backend), class_names=["background"] + [f"c{i}" for i in range(1, k_classes)])
    X = rng.standard_normal((n, d), dtype=np.float32)
    g.X_ = l2_normalize(X)
    g.degree_ = rng.uniform(1, 50, n)
    p = rng.random((n, k_classes), dtype=np.float32)
    g.pstar_ = p / p.sum(1, keepdims=True)
    g.probe_ = LinearProbe(l2_normalize(rng.standard_normal((k_classes, d), dtype=np.float32)))
    g.k_graph_, g.kind_, g.has_bg_ = 50, "weak", True
    return g


REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=325_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--masks", type=int, default=30)
    ap.add_argument("--backends", default="torch,faiss,faiss-ivf")
    ap.add_argument("--warm", type=int, default=20, help="warm calls per backend")
    ap.add_argument("--cold", type=int, default=3, help="rebuild-per-call calls per backend")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_predictor.json"))
    a = ap.parse_args()

    import torch

    from tusss.classify import GLCCClassifier

    rng = np.random.default_rng(1)
    config = {**vars(a), "out": os.path.relpath(a.out, REPO)}  # no machine path in results
    res = {"config": config, "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                          "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                          "load_avg_at_start": os.getloadavg()}, "backends": {}}
    for be in a.backends.split(","):
        g = fitted_glcc(a.n, a.d, 21, be)
        clf = GLCCClassifier(g)
        t0 = time.perf_counter()
        clf.warm_up()  # builds the index once
        t_build = time.perf_counter() - t0
        warm, cold, same = [], [], True
        for i in range(max(a.warm, a.cold)):
            q = rng.standard_normal((a.masks, a.d), dtype=np.float32)
            t0 = time.perf_counter()
            s_w, lab_w, _ = clf.classify(q)
            tw = time.perf_counter() - t0
            if i < a.warm:
                warm.append(tw)
            if i < a.cold:
                saved = g._index
                g._index = None  # rebuild-per-call: the index is dropped before the call
                t0 = time.perf_counter()
                s_c, lab_c, _ = clf.classify(q)
                cold.append(time.perf_counter() - t0)
                g._index = saved
                same &= bool((lab_w == lab_c).all()) and bool(np.allclose(s_w, s_c, atol=1e-5))
        r = {"index_build_s": t_build, "warm_median_s": float(np.median(warm)),
             "warm_p90_s": float(np.percentile(warm, 90)), "rebuild_median_s": float(np.median(cold)),
             "speedup": float(np.median(cold) / np.median(warm)),
             "same_output": same, "n_warm": len(warm), "n_rebuild": len(cold), "index_builds": g._index.builds}
        res["backends"][be] = r
        print(f"{be:10s} index build {t_build:7.3f} s | per image ({a.masks} masks): warm "
              f"{r['warm_median_s'] * 1e3:8.2f} ms, rebuild-per-call {r['rebuild_median_s'] * 1e3:9.2f} ms -> "
              f"{r['speedup']:.1f}x; same output: {same}",
              flush=True)
        del g, clf
    res["machine"]["load_avg_at_end"] = os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"-> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
