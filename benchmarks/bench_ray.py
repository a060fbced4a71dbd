"""Ray extraction against the single-process path on the same images (issue 11): overhead as a ratio.

Every command runs as ``python -m tusss.cli ...`` in a fresh process (the Ray commands connect to one running
local cluster, whose start is timed separately), on one tiny generated VOC layout with hand-made cached masks
(grid masks, so the embed stage has a fixed amount of work per image) and random seeded weights:

* ``embed``: ``tusss embed`` (single process) vs ``tusss embed --ray`` on a local Ray cluster of ``--cpus`` CPUs
  with 1 and 2 DBA-CLIP actors; both write a store, the script checks the stores are identical.
* ``masks``: ``tusss masks`` vs ``tusss masks --ray`` (vit_tiny SAM, small grid), caches checked identical.

Reported per configuration: wall seconds end to end (command start to store closed, model builds included:
the Ray path builds its models inside the actors), and the ratio Ray / single-process; with two image counts,
the line through both splits each path into a fixed cost per command and a cost per image (the per-image ratio
is the overhead that remains at dataset scale). ``ray.init`` is timed
separately (paid once per cluster, not per command on a running cluster). Run it with the machine otherwise idle
for meaningful ratios::

    OMP_NUM_THREADS=1 python benchmarks/bench_ray.py --images 12 48 --out benchmarks/results/ray_tiny.json
    OMP_NUM_THREADS=1 python benchmarks/bench_ray.py --clip ViT-B-16 --skip-masks --images 8 32 \
        --out benchmarks/results/ray_vitb16.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only; read when Ray is imported

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CLIP = {"tusss-tiny": ["--clip", "tusss-tiny", "--weights", "random", "--clip-opt", "target_size=64",
                       "--clip-opt", "window_sizes=[32]", "--clip-opt", "stride_divisor=1"],
        "ViT-B-16": ["--clip", "ViT-B-16", "--weights", "random", "--clip-opt", "target_size=224",
                     "--clip-opt", "window_sizes=[224]", "--clip-opt", "stride_divisor=1"]}
SAM = ["--sam", "vit_tiny", "--checkpoint", "random"]
for _o in ("points_per_side=4", "crop_n_layers=0", "pred_iou_thresh=-10", "stability_score_thresh=-10",
           "min_mask_region_area=0", "box_nms_thresh=1.0", "rock_sand_water_thresh=null"):
    SAM += ["--sam-opt", _o]


def grid_masks(hw: tuple[int, int], step: int) -> object:
    from tusss.masks.maskset import MaskSet

    h, w = hw
    ms = []
    for y in range(0, h, step):
        for x in range(0, w, step):
            m = np.zeros(hw, bool)
            m[y:y + step, x:x + step] = True
            ms.append(m)
    M = len(ms)
    return MaskSet(np.stack(ms), np.arange(M) % 3, np.ones(M), np.ones(M))


def same_store(a: Path, b: Path) -> bool:
    from tusss.data.store import EmbeddingStore

    if json.loads((a / "index.json").read_text()) != json.loads((b / "index.json").read_text()):
        return False
    sa, sb = EmbeddingStore(a), EmbeddingStore(b)
    return all(np.array_equal(sa.shard(i), sb.shard(i)) for i in range(len(sa.shards)))


def same_cache(a: Path, b: Path) -> bool:
    from tusss.masks.cache import open_mask_cache

    ca, cb = open_mask_cache(a), open_mask_cache(b)
    if ca.ids() != cb.ids():
        return False
    return all(np.array_equal(ca.get(i).masks, cb.get(i).masks) for i in ca.ids())


def timed(argv: list[str], address: str | None = None) -> tuple[float, int]:
    """Wall seconds of one ``tusss`` command in a fresh process (imports and model builds included, as a user
    pays them), connected to the Ray cluster at ``address`` when given."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "tusss.cli", *argv, *(["--ray", address] if address else [])]
    t = time.perf_counter()
    rc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return time.perf_counter() - t, rc


def run_size(args: argparse.Namespace, n_images: int, tmp: Path) -> list[dict]:
    """All configurations on ``n_images`` images; returns rows (stage, path, wall_s, identical)."""
    import ray
    from _tiny_datasets import make_voc

    from tusss.data.datasets import get_dataset
    from tusss.distributed import init_ray
    from tusss.masks.cache import MaskCache

    rows: list[dict] = []
    root = tmp / "VOC2012"
    ids = [f"2007_{i:06d}" for i in range(n_images)]
    make_voc(root, {"train_aug": ids}, hw=tuple(args.hw))
    cache = MaskCache(tmp / "cache", "grid")
    for i in get_dataset("voc", root, "train_aug").ids:
        cache.put(i, grid_masks(tuple(args.hw), args.mask_step))
    base = ["embed", "--dataset", "voc", "--root", str(root), "--split", "train_aug", "--mask-cache",
            str(tmp / "cache"), *CLIP[args.clip], "--no-progress", "--shard-size", "256"]
    if ray.is_initialized():
        ray.shutdown()  # single-process baselines run without Ray's processes around
    t, rc = timed([*base, "--out", str(tmp / "single")])
    assert rc == 0
    rows.append({"stage": "embed", "path": "single-process", "wall_s": t})
    if not args.skip_masks:
        mbase = ["masks", "--dataset", "voc", "--root", str(root), "--split", "train_aug", *SAM, "--no-progress"]
        t, rc = timed([*mbase, "--cache-dir", str(tmp / "m_single")])
        assert rc == 0
        rows.append({"stage": "masks", "path": "single-process", "wall_s": t})
    init_ray(num_cpus=args.cpus)
    address = ray.get_runtime_context().gcs_address  # the commands connect to this running cluster
    for n in args.actors:
        out = tmp / f"ray{n}"
        t, rc = timed([*base, "--out", str(out), "--ray-actors", str(n)], address)
        assert rc == 0
        rows.append({"stage": "embed", "path": f"ray, {n} actor(s)", "wall_s": t,
                     "identical": same_store(tmp / "single", out)})
        if not args.skip_masks:
            out = tmp / f"m_ray{n}"
            t, rc = timed([*mbase, "--cache-dir", str(out), "--ray-actors", str(n)], address)
            assert rc == 0
            rows.append({"stage": "masks", "path": f"ray, {n} actor(s)", "wall_s": t,
                         "identical": same_cache(tmp / "m_single", out)})
    ray.shutdown()
    for r in rows:
        r["images"] = n_images
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs="+", default=[12, 48],
                    help="image counts; with two, the fixed cost and the per-image cost are separated")
    ap.add_argument("--hw", type=int, nargs=2, default=(96, 128), help="image height width")
    ap.add_argument("--clip", default="tusss-tiny", choices=sorted(CLIP))
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--mask-step", type=int, default=16, help="grid mask size (masks per image = H*W/step^2)")
    ap.add_argument("--skip-masks", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/ray_tiny.json")
    args = ap.parse_args()

    from tusss.distributed import init_ray

    res: dict = {"hw": list(args.hw), "clip": args.clip, "cpus": args.cpus, "load_avg_start": os.getloadavg()[0],
                 "masks_per_image": len(grid_masks(tuple(args.hw), args.mask_step)), "rows": []}
    t0 = time.perf_counter()
    init_ray(num_cpus=args.cpus)
    res["ray_init_s"] = time.perf_counter() - t0
    for n in args.images:
        tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
        try:
            res["rows"] += run_size(args, n, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    res["load_avg_end"] = os.getloadavg()[0]
    # ratios against the single-process row of the same stage and size; with two sizes, a line through both
    lines = {}
    for r in res["rows"]:
        base = next(b for b in res["rows"] if b["stage"] == r["stage"] and b["images"] == r["images"]
                    and b["path"] == "single-process")
        r["ratio"] = r["wall_s"] / base["wall_s"]
        lines.setdefault((r["stage"], r["path"]), []).append((r["images"], r["wall_s"]))
    res["fits"] = []
    for (stage, path), pts in lines.items():
        if len(pts) >= 2:
            (n1, t1), (n2, t2) = sorted(pts)[0], sorted(pts)[-1]
            per = (t2 - t1) / (n2 - n1)
            res["fits"].append({"stage": stage, "path": path, "fixed_s": t1 - per * n1, "per_image_s": per})
    for f in res["fits"]:
        base = next(b for b in res["fits"] if b["stage"] == f["stage"] and b["path"] == "single-process")
        f["per_image_ratio"] = f["per_image_s"] / base["per_image_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"images {args.images} of {args.hw[0]}x{args.hw[1]}, {res['masks_per_image']} masks each, clip "
          f"{args.clip}, local Ray cluster of {args.cpus} CPUs (ray.init {res['ray_init_s']:.1f} s, not included)")
    for r in res["rows"]:
        print(f"  {r['images']:4d} img  {r['stage']:6s} {r['path']:18s} {r['wall_s']:7.1f} s  x{r['ratio']:.2f}"
              + (f"  identical={r['identical']}" if "identical" in r else ""))
    for f in res["fits"]:
        print(f"  fit  {f['stage']:6s} {f['path']:18s} fixed {f['fixed_s']:6.1f} s  per image {f['per_image_s']:.3f} s"
              f"  x{f['per_image_ratio']:.2f}")
    print(f"load average {res['load_avg_start']:.1f} -> {res['load_avg_end']:.1f}; -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
