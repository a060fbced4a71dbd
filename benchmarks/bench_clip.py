"""Whole-image DBA-CLIP benchmarks (issue "Fused DBA-CLIP kernels"); all ratios within one run, one machine.

    nice python benchmarks/bench_clip.py [--model ViT-B-16] [--size 375x500] [--masks 40] [--repeat 3]
                                         [--threads 2] [--out benchmarks/results/clip.json]

Random (seeded) weights, a random 500×375 image and ``--masks`` Voronoi masks (SAM-like: disjoint, covering).

1. Cost of being mask-aware, ``reference`` preset (448×608 resized, 40 windows of 224 at stride 56 + global pass):
   - ``embed_masks``: the full call on the tusss.kernels path (bitsets, dual-softmax kernel / PyTorch twin,
     adjoint GSW pooling weights), TUSSS_KERNELS as set (auto: Triton on CUDA, PyTorch twin on CPU);
   - ``tower``: the plain open_clip image tower (unmodified last block, LN_post + proj; the ``plain`` preset's
     TowerRunner, tested equal to open_clip's own forward) on exactly the same global image and window crops,
     batched (all windows in one batch), no masks, no pooling;
   - ``naive``: the reference code's computation: passes with the materialised L×L bias (TUSSS_KERNELS=reference)
     + full-resolution GSW canvas, bilinear upsampling to 500×375 and masked averages
     (``tusss.kernels.pooling.gsw_pool_reference``).
   overhead = (t − t_tower) / t_tower for embed_masks and naive.
2. ``paper`` preset, ``--masks`` masks (15 windows at stride 112 + global pass): the last block + readout of all
   masks via the packed ragged attention vs M separate last-block passes (materialised per-mask bias) on the
   same trunk outputs; and the whole embed_masks both ways.
Reports min over ``--repeat`` interleaved runs of wall time and process CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tusss.clip import DBAClip, DBAClipConfig
from tusss.clip.block import TowerRunner
from tusss.clip.gsw import global_token_masks, normalize_image, resize_image, window_crops, window_token_masks
from tusss.kernels.pooling import gsw_pool_reference

ROOT = Path(__file__).resolve().parent


def _masks(h: int, w: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` SAM-like masks: a random Voronoi partition (disjoint, covering the image)."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform([0, 0], [h, w], size=(n, 2))
    yy, xx = np.mgrid[:h, :w]
    lab = np.argmin((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2, axis=-1)
    m = lab[None] == np.arange(n)[:, None, None]
    return m[m.reshape(n, -1).any(1)]


class _Env:
    """Temporarily set TUSSS_KERNELS."""

    def __init__(self, value: str | None):
        self.value, self.old = value, None

    def __enter__(self):
        self.old = os.environ.get("TUSSS_KERNELS")
        if self.value is not None:
            os.environ["TUSSS_KERNELS"] = self.value

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("TUSSS_KERNELS", None)
        else:
            os.environ["TUSSS_KERNELS"] = self.old


def measure(fns: dict[str, Callable[[], object]], repeat: int, sync: Callable[[], None]) -> dict[str, dict]:
    """Min wall / CPU seconds of each fn over ``repeat`` interleaved runs (after one warm-up each)."""
    for f in fns.values():
        f()
        sync()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t, c = time.perf_counter(), time.process_time()
            f()
            sync()
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    return {k: {"wall_s": min(wall[k]), "cpu_s": min(cpu[k]), "wall_all_s": wall[k]} for k in fns}


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--size", default="375x500", help="HxW of the image")
    ap.add_argument("--masks", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (0: torch default)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "clip.json")
    a = ap.parse_args()
    h, w = (int(s) for s in a.size.split("x"))
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    clip = DBAClip.from_pretrained(a.model, weights=None, preset="reference", device=a.device)
    paper = DBAClip(clip.model, DBAClipConfig.preset("paper"), a.model)
    plain = TowerRunner(clip.model.visual, DBAClipConfig.preset("plain"))
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = _masks(h, w, a.masks)
    m_t = torch.from_numpy(masks).to(clip.device)
    sync = torch.cuda.synchronize if clip.device.type == "cuda" else (lambda: None)
    res: dict[str, object] = {
        "model": a.model, "image_hw": [h, w], "masks": int(len(masks)), "device": str(clip.device),
        "torch_threads": torch.get_num_threads(), "nice": os.nice(0), "machine": platform.machine(),
        "TUSSS_KERNELS": os.environ.get("TUSSS_KERNELS", "auto"), "repeat": a.repeat,
        "loadavg_start": os.getloadavg(),
    }

    # ---- 1. reference preset: embed_masks vs the plain tower vs the naive path --------------------------------
    lay = clip.layout((h, w))
    (group,) = lay.groups
    resized = normalize_image(resize_image(img, lay.resized_hw), clip.cfg.image_mean, clip.cfg.image_std,
                              clip.device)
    crops = window_crops(resized, group)

    def tower():
        plain.features(resized[None], None)
        plain.features(crops, None)

    def embed():
        clip.embed_masks(img, masks)

    def naive():
        with _Env("reference"):
            _, g, wf = clip.pass_features(img, masks)
        d = g.shape[-1]
        gsw_pool_reference(g.reshape(-1, d).cpu(), wf[0].reshape(lay.n_windows, -1, d).cpu(), m_t.cpu(),
                           lay.resized_hw, window=group.size[0], stride=clip.cfg.window_strides()[0],
                           global_weight=lay.global_weight)

    t1 = measure({"tower": tower, "embed_masks": embed, "naive": naive}, a.repeat, sync)
    base = t1["tower"]
    res["reference"] = {
        "resized_hw": list(lay.resized_hw), "windows": lay.n_windows, "stride": clip.cfg.window_strides()[0],
        "times": t1,
        "overhead_embed_masks_wall": t1["embed_masks"]["wall_s"] / base["wall_s"] - 1.0,
        "overhead_embed_masks_cpu": t1["embed_masks"]["cpu_s"] / base["cpu_s"] - 1.0,
        "overhead_naive_wall": t1["naive"]["wall_s"] / base["wall_s"] - 1.0,
        "overhead_naive_cpu": t1["naive"]["cpu_s"] / base["cpu_s"] - 1.0,
    }

    # ---- 2. paper preset: packed ragged attention vs M separate last-block passes ----------------------------
    play = paper.layout((h, w))
    (pgroup,) = play.groups
    pcrops = window_crops(resized, pgroup)
    runner = paper.runner
    grid = (play.resized_hw[0] // 16, play.resized_hw[1] // 16)
    x_g, x_w = runner.trunk(resized[None]), runner.trunk(pcrops)
    tm_g = global_token_masks(m_t, grid, paper.cfg.token_downsample)[None]
    tm_w = window_token_masks(m_t, play, pgroup, paper.cfg)
    assert runner.packed_ok()

    def packed_block():
        runner.per_mask_packed(x_g, tm_g)
        runner.per_mask_packed(x_w, tm_w)

    def separate_block():
        with _Env("reference"):
            runner.per_mask_passes(x_g, tm_g)
            runner.per_mask_passes(x_w, tm_w)

    def paper_embed():
        paper.embed_masks(img, masks)

    def paper_embed_separate():
        with _Env("reference"):
            paper.embed_masks(img, masks)

    t2 = measure({"packed_last_block": packed_block, "separate_last_block": separate_block,
                  "embed_masks_packed": paper_embed, "embed_masks_separate": paper_embed_separate},
                 max(1, a.repeat - 1), sync)
    res["paper"] = {
        "windows": play.n_windows, "stride": paper.cfg.window_strides()[0],
        "sequences_separate": int(tm_w.shape[0] * tm_w.shape[1] + tm_g.shape[1]),
        "times": t2,
        "speedup_last_block_wall": t2["separate_last_block"]["wall_s"] / t2["packed_last_block"]["wall_s"],
        "speedup_last_block_cpu": t2["separate_last_block"]["cpu_s"] / t2["packed_last_block"]["cpu_s"],
        "speedup_embed_masks_wall": t2["embed_masks_separate"]["wall_s"] / t2["embed_masks_packed"]["wall_s"],
        "speedup_embed_masks_cpu": t2["embed_masks_separate"]["cpu_s"] / t2["embed_masks_packed"]["cpu_s"],
    }
    res["loadavg_end"] = os.getloadavg()
    print(json.dumps(res, indent=1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
