"""Benchmark of the SAM mask stage: ``MaskGenerator.generate`` vs segment_anything's own generator.

Run::

    python benchmarks/bench_masks.py --model vit_tiny --size 512 --preset tuss
    python benchmarks/bench_masks.py --model vit_b --size 512 --preset sam --points-per-batch 64 --baseline

Random weights unless ``--checkpoint`` is given (``official`` or a path); with random weights most
candidates are filtered out, so the figures measure the network + SAM's pre/post-processing, not RLE /
NMS / RSW under a realistic mask load. ``--baseline`` also times ``SamAutomaticMaskGenerator`` with the
same SAM arguments (no level offsets, no RSW) in the same run and reports the ratio. Prints one JSON line
and appends it to ``--out`` (default ``benchmarks/results/bench_masks.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_tiny")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--preset", default="tuss")
    ap.add_argument("--size", type=int, default=512, help="square image side")
    ap.add_argument("--points-per-side", type=int, default=None)
    ap.add_argument("--points-per-batch", type=int, default=None)
    ap.add_argument("--crop-n-layers", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--baseline", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_masks.jsonl"))
    a = ap.parse_args(argv)

    from segment_anything import SamAutomaticMaskGenerator

    from tusss.masks import MaskGenerator

    ov = {}
    for k in ("points_per_side", "points_per_batch", "crop_n_layers"):
        if getattr(a, k) is not None:
            ov[k] = getattr(a, k)
    torch.manual_seed(0)
    gen = MaskGenerator.from_pretrained(a.model, a.checkpoint, preset=a.preset, device=a.device, **ov)
    rng = np.random.default_rng(0)
    # smooth random image (blobs) rather than white noise
    small = (rng.random((a.size // 16 + 1, a.size // 16 + 1, 3)) * 255).astype(np.uint8)
    img = np.ascontiguousarray(np.kron(small, np.ones((16, 16, 1), np.uint8))[: a.size, : a.size])

    def timed(fn) -> tuple[float, object]:
        best, out = float("inf"), None
        for _ in range(a.repeat):
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = fn()
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        return best, out

    t_ours, ms = timed(lambda: gen.generate(img))
    rec = dict(
        bench="masks.generate",
        model=a.model,
        checkpoint=a.checkpoint,
        preset=a.preset,
        overrides=ov,
        image=[a.size, a.size],
        device=a.device,
        torch_threads=torch.get_num_threads(),
        host=platform.node(),
        seconds=round(t_ours, 3),
        n_masks=len(ms),
    )
    if a.baseline:
        amg = SamAutomaticMaskGenerator(gen.sam, **gen.config.sam_kwargs())
        t_ref, ref = timed(lambda: amg.generate(img))
        rec.update(baseline="SamAutomaticMaskGenerator", baseline_seconds=round(t_ref, 3),
                   baseline_n_masks=len(ref), speedup=round(t_ref / t_ours, 3))  # fmt: skip
    print(json.dumps(rec))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


if __name__ == "__main__":
    main()
