"""Peak memory of ``tusss fit`` on a 325k x 512 float16 embedding store (issue 11).

Run::

    nice python benchmarks/bench_fit_memory.py --make-store /tmp/store325 --n 325000
    nice python benchmarks/bench_fit_memory.py --store /tmp/store325 --label after \\
        [--pythonpath OTHER_CHECKOUT --label before] [--out benchmarks/results/fit_memory.json]

Each measurement runs ``tusss fit --supervision full`` in a fresh child process and reads the child's peak
resident set size (``ru_maxrss`` of RUSAGE_CHILDREN), which counts anonymous memory and the touched pages of
memory-mapped shards. ``--pythonpath`` runs another checkout of tusss (e.g. a ``git worktree`` of an older
commit) to measure "before" under the same load. The exact kNN search is replaced in the child by
kNN-shaped synthetic lists of the same (N, k + 1) shape (an exact 325k x 325k search costs ~15 min on two
shared cores); the real search adds at most its similarity tile (``budget_bytes``, 256 MB) on top.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import sys, numpy as np
sys.path.insert(0, {bench!r})
import tusss.glcc.knn as knn
from bench_glcc import synthetic_knn_lists

def fake_search(queries, base, k, **kw):
    n = queries.shape[0]
    s, i, _ = synthetic_knn_lists(n, k - 1)
    return (np.concatenate([np.ones((n, 1), np.float32), s], 1),
            np.concatenate([np.arange(n)[:, None], i], 1))

knn.knn_search = fake_search
from tusss.cli import main
sys.exit(main(["fit", "--store", {store!r}, "--supervision", "full", "--out", {out!r}, "--probe-iters", "20",
               "--no-progress"]))
"""


def make_store(root: str, n: int, K: int = 21, dim: int = 512, per_image: int = 40) -> None:
    """A synthetic float16 store of n masks (per_image per image) with one-hot GT fractions."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_glcc import synth

    from tusss.data.store import StoreWriter

    X, y = synth(n, dim, K)
    w = StoreWriter(root, dim, dtype="float16", num_classes=K, shard_size=65536,
                    meta={"class_names": [f"c{j}" for j in range(K)], "has_background": True})
    eye = np.eye(K, dtype=np.float32)
    for j, a in enumerate(range(0, n, per_image)):
        b = min(n, a + per_image)
        w.add(f"img{j:06d}", X[a:b], area=np.full(b - a, 1000), gt_fractions=eye[y[a:b]])
    w.close()


def measure(store: str, pythonpath: str | None, workdir: str) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    code = CHILD.format(bench=str(Path(__file__).parent.resolve()), store=store, out=str(Path(workdir) / "model"))
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=workdir, capture_output=True, text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if p.returncode != 0:
        raise SystemExit(f"fit failed ({p.returncode}):\n{p.stderr[-3000:]}")
    if peak <= before:
        print("warning: ru_maxrss of children did not grow (an earlier child was larger); run one label per call")
    return {"peak_rss_mb": peak / 1024, "seconds": time.perf_counter() - t0, "stdout_tail": p.stdout[-600:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make-store")
    ap.add_argument("--n", type=int, default=325_000)
    ap.add_argument("--store")
    ap.add_argument("--label", default="current")
    ap.add_argument("--pythonpath", help="PYTHONPATH of the child (another checkout of tusss)")
    ap.add_argument("--workdir", default="/tmp/tusss_fit_memory")
    ap.add_argument("--out", default="benchmarks/results/fit_memory.json")
    args = ap.parse_args()
    if args.make_store:
        make_store(args.make_store, args.n)
        print(f"store -> {args.make_store}")
        return
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    r = measure(args.store, args.pythonpath, args.workdir)
    r.update({"label": args.label, "store": args.store, "loadavg": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S")})
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.exists() else {}
    res[args.label] = r
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"{args.label}: peak RSS {r['peak_rss_mb']:.0f} MB in {r['seconds']:.0f} s -> {out}")


if __name__ == "__main__":
    main()
