"""DBA-CLIP embed_masks cost vs the plain CLIP image tower on the same GSW passes.

    python benchmarks/bench_clip.py [--model ViT-B-16] [--size 375x500] [--masks 40] [--repeat 3] [--out FILE]

Random weights (seeded). Reports the minimum over repeats (interleaved) of:
- ``embed_masks``: full reference-preset call (resize, 40 windows + global pass, bias, pooling);
- ``plain_passes``: the unmodified image tower (embeddings, all blocks, LN_post + proj) on exactly the same
  window crops + global image, no masks, no pooling;
- ``trunk``: blocks 0..n-2 only on the same inputs; ``pooling``: GSW fusion + mask pooling only.
CPU (process) time is reported beside wall time (shared machines). Ratios are within one run on one
machine (see docs/TEAM.md: performance claims are ratios).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from tusss.clip import DBAClip, DBAClipConfig
from tusss.clip.block import TowerRunner
from tusss.clip.gsw import normalize_image, resize_image, window_crops
from tusss.clip.pooling import gsw_pool


def _masks(h: int, w: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` SAM-like masks: a random Voronoi partition (disjoint, covering the image)."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform([0, 0], [h, w], size=(n, 2))
    yy, xx = np.mgrid[:h, :w]
    lab = np.argmin((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2, axis=-1)
    m = lab[None] == np.arange(n)[:, None, None]
    return m[m.reshape(n, -1).any(1)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--size", default="375x500")
    ap.add_argument("--masks", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--preset", default="reference")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    a = ap.parse_args()
    h, w = (int(s) for s in a.size.split("x"))
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    clip = DBAClip.from_pretrained(a.model, weights=None, preset=a.preset, device=a.device)
    plain = TowerRunner(clip.model.visual, DBAClipConfig.preset("plain"))
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = _masks(h, w, a.masks)
    lay = clip.layout((h, w))
    resized = normalize_image(resize_image(img, lay.resized_hw), clip.cfg.image_mean, clip.cfg.image_std,
                              clip.device)
    crops = [window_crops(resized, g) for g in lay.groups]
    sync = torch.cuda.synchronize if clip.device.type == "cuda" else (lambda: None)

    def plain_passes():
        with torch.no_grad():
            if lay.has_global:
                plain.features(resized[None], None)
            for c in crops:
                plain.features(c, None)
        sync()

    def trunk():
        with torch.no_grad():
            if lay.has_global:
                plain.trunk(resized[None])
            for c in crops:
                plain.trunk(c)
        sync()

    _, gfeat, wfeats = clip.pass_features(img, masks)
    m_t = torch.from_numpy(masks).to(clip.device)

    def pooling():
        gsw_pool(m_t, lay, gfeat, wfeats)
        sync()

    def embed():
        clip.embed_masks(img, masks)
        sync()

    fns = {"embed_masks": embed, "plain_passes": plain_passes, "trunk": trunk, "pooling": pooling}
    for f in fns.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(a.repeat):
        for k, f in fns.items():
            t, c = time.perf_counter(), time.process_time()
            f()
            times[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    best = {k: min(v) for k, v in times.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    res = {
        "model": a.model, "preset": a.preset, "image": [h, w], "masks": int(len(masks)),
        "resized": list(lay.resized_hw), "windows": lay.n_windows, "device": str(clip.device),
        "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "seconds_min": best,
        "cpu_seconds_min": best_cpu,
        "embed_over_plain": best["embed_masks"] / best["plain_passes"],
        "embed_over_plain_cpu": best_cpu["embed_masks"] / best_cpu["plain_passes"],
    }
    print(json.dumps(res, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
