"""Benchmarks of the fused DBA-CLIP kernels (issue "Fused DBA-CLIP kernels"); ratios within one run.

    python benchmarks/bench_kernels.py [--reps N] [--threads T] [--out benchmarks/results/kernels.csv]

Cases (CPU PyTorch twins here; on a CUDA machine the Triton kernels are timed too):
  pooling   500×375 image, 40 masks, D = 512: adjoint weights + one matmul vs full-resolution upsample-and-average
            (single pass, and GSW with the reference geometry: 448×608 resized, 40 windows + global pass).
            Memory = peak resident-set growth during the call (VmHWM after resetting it via /proc/self/clear_refs).
  attention DBA last block, 12 heads × 64: torch twin (SDPA, float bias) vs materialised bias + two explicit
            softmaxes (the reference code's computation), for B = 40 windows × L = 197 and one L = 1177 pass.
  paper     ``paper`` preset, 40 masks: packed ragged attention (shared pass + Σ n_m² packed pass) vs 40 separate
            last-block attention passes with the materialised per-mask bias.
CPU memory: glibc's mmap threshold is fixed at 128 KiB so freed tensors leave the resident set.
Writes a CSV (one row per variant) and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from tusss.kernels import (
    gsw_pool,
    gsw_pool_weights,
    mask_pool,
    masked_dual_attention,
    paper_attention,
)
from tusss.kernels.packed import paper_attention_reference
from tusss.kernels.pooling import gsw_pool_reference, mask_pool_reference

ROOT = Path(__file__).resolve().parent


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], reps: int) -> float:
    """Median wall time in ms over ``reps`` runs after one warm-up."""
    fn()
    _sync()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def fix_malloc() -> None:
    """Make freed large blocks go back to the OS (glibc's dynamic mmap threshold otherwise keeps them in the heap
    after the first big free, and later peaks would not show in the resident set)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 17)  # M_MMAP_THRESHOLD = 128 KiB, fixed
        libc.mallopt(-1, 1 << 17)  # M_TRIM_THRESHOLD
    except OSError:  # pragma: no cover - not glibc
        pass


def peak_mem_mb(fn: Callable[[], object]) -> float:
    """Peak resident-memory growth (MB) while running ``fn`` (CPU). Resets the high-water mark first."""
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _status("VmRSS:")
        out = fn()
        peak = _status("VmHWM:")
        del out
        return (peak - base) / 2**20
    except OSError:  # pragma: no cover - non-Linux
        return float("nan")


def cuda_peak_mb(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def voronoi_masks(m: int, h: int, w: int, gen: torch.Generator, overlap: int = 4) -> torch.Tensor:
    """(m, h, w) bool quasi-superpixels: a Voronoi partition of the image plus ``overlap`` masks that also cover a
    neighbouring region (SAM 'minimal-overlapping' masks are almost disjoint)."""
    seeds = torch.rand(m, 2, generator=gen) * torch.tensor([h, w])
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    d = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    lab = d.argmin(0)
    masks = lab[None] == torch.arange(m)[:, None, None]
    for i in range(min(overlap, m - 1)):
        masks[i] |= masks[i + 1]
    return masks[masks.flatten(1).any(1)]


def token_masks(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    return (F.interpolate(masks[None].float(), size=grid, mode="nearest")[0] > 0.5).flatten(1)


def naive_attention(q, k, v, tm, bias_value=-4.0):
    """Reference computation: C = Σ m̂m̂ᵀ, materialised (B, L, L) bias, two explicit softmaxes, sum."""
    b, _, L, hd = q.shape
    tmf = tm.float()
    c = torch.einsum("bmi,bmj->bij", tmf, tmf)
    bias = torch.full((b, L, L), bias_value, dtype=q.dtype, device=q.device)
    bias[:, 1:, 1:] = torch.where(c > 0.5, 0.0, bias_value)
    bias[:, 0, :] = 0
    bias[:, :, 0] = 0
    bias = bias[:, None]
    s = hd**-0.5
    a = torch.softmax(s * q @ q.transpose(-1, -2) + bias, -1) + torch.softmax(s * k @ k.transpose(-1, -2) + bias, -1)
    return a @ v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave the default)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "kernels.csv")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fix_malloc()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dname = torch.cuda.get_device_name() if dev == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    gen = torch.Generator().manual_seed(0)
    rows: list[dict[str, object]] = []

    def add(bench, variant, shape, ms, mem=float("nan"), base=None):
        rows.append({"benchmark": bench, "variant": variant, "device": dname, "shape": shape,
                     "time_ms": round(ms, 3), "peak_mem_mb": round(mem, 1),
                     "speedup_vs_baseline": round(base / ms, 2) if base else 1.0})

    mem = cuda_peak_mb if dev == "cuda" else peak_mem_mb

    # ---- pooling ------------------------------------------------------------------------------------------
    H0, W0, M, D = 375, 500, 40, 512
    masks = voronoi_masks(M, H0, W0, gen).to(dev)
    hr, wr = 448, 608  # §3 resize of 500×375: short side 448, long side 597 -> 608
    grid = (hr // 16, wr // 16)
    feats = torch.randn(*grid, D, generator=gen).to(dev)
    shape = f"{W0}x{H0} M={masks.shape[0]} D={D} grid={grid[0]}x{grid[1]}"
    t_ref = timeit(lambda: mask_pool_reference(feats, masks), max(2, args.reps // 2))
    m_ref = mem(lambda: mask_pool_reference(feats, masks))
    add("pool single pass", "full-res upsample+average", shape, t_ref, m_ref)
    t_adj = timeit(lambda: mask_pool(feats, masks), args.reps)
    add("pool single pass", "adjoint weights + matmul", shape, t_adj, mem(lambda: mask_pool(feats, masks)), t_ref)

    f_glob = torch.randn(grid[0] * grid[1], D, generator=gen).to(dev)
    f_win = torch.randn(40, 196, D, generator=gen).to(dev)
    shape = f"{W0}x{H0} M={masks.shape[0]} D={D} resized {wr}x{hr}, 40 windows + global"
    t_ref = timeit(lambda: gsw_pool_reference(f_glob.cpu(), f_win.cpu(), masks.cpu(), (hr, wr)), 1)
    m_ref = peak_mem_mb(lambda: gsw_pool_reference(f_glob.cpu(), f_win.cpu(), masks.cpu(), (hr, wr)))
    add("pool GSW", "full-res canvas (docs/reference-code.md §3, CPU)", shape, t_ref, m_ref)

    def gsw_adj():
        return gsw_pool(*gsw_pool_weights(masks, (hr, wr)), f_glob, f_win)

    add("pool GSW", "adjoint composed weights + matmul", shape, timeit(gsw_adj, args.reps), mem(gsw_adj), t_ref)

    # ---- DBA attention ------------------------------------------------------------------------------------
    for b, g, nm in [(40, (14, 14), 40), (1, (28, 42), 40)]:
        L = g[0] * g[1] + 1
        q, k, v = (torch.randn(b, 12, L, 64, generator=gen).to(dev) for _ in range(3))
        tm = torch.stack([token_masks(voronoi_masks(nm, 16 * g[0], 16 * g[1], gen), g) for _ in range(b)]).to(dev)
        shape = f"B={b} L={L} heads=12 hd=64 M={nm}"
        t_ref = timeit(lambda q=q, k=k, v=v, tm=tm: naive_attention(q, k, v, tm), args.reps)
        m_ref = mem(lambda q=q, k=k, v=v, tm=tm: naive_attention(q, k, v, tm))
        add("DBA attention", "materialised bias + 2 softmax", shape, t_ref, m_ref)

        def twin(q=q, k=k, v=v, tm=tm):
            return masked_dual_attention(q, k, v, tm, backend="torch")

        add("DBA attention", "torch twin (SDPA)", shape, timeit(twin, args.reps), mem(twin), t_ref)
        if dev == "cuda":
            def tri(q=q, k=k, v=v, tm=tm):
                return masked_dual_attention(q, k, v, tm, backend="triton")

            add("DBA attention", "triton fused", shape, timeit(tri, args.reps), mem(tri), t_ref)

    # ---- paper preset -------------------------------------------------------------------------------------
    for b, g, nm in [(1, (28, 42), 40), (8, (14, 14), 40)]:
        L = g[0] * g[1] + 1
        q, k, v = (torch.randn(b, 12, L, 64, generator=gen).to(dev) for _ in range(3))
        tm = torch.stack([token_masks(voronoi_masks(nm, 16 * g[0], 16 * g[1], gen, overlap=0), g)[:nm]
                          for _ in range(b)]).to(dev)
        shape = f"B={b} L={L} heads=12 hd=64 M={tm.shape[1]}"

        def sep(q=q, k=k, v=v, tm=tm):
            return paper_attention_reference(q, k, v, tm)

        t_ref = timeit(sep, max(1, args.reps // 2))
        add("paper preset", f"{tm.shape[1]} separate passes (materialised bias)", shape, t_ref)
        backends = ["torch"] + (["triton"] if dev == "cuda" else [])
        for be in backends:
            def packed(q=q, k=k, v=v, tm=tm, be=be):
                return paper_attention(q, k, v, tm, backend=be)

            add("paper preset", f"packed ragged ({be})", shape, timeit(packed, args.reps), mem(packed), t_ref)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        wr_ = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr_.writeheader()
        wr_.writerows(rows)
    cols = ["benchmark", "variant", "shape", "time_ms", "peak_mem_mb", "speedup_vs_baseline"]
    widths = [max(len(str(r[c])) for r in rows + [dict(zip(cols, cols))]) for c in cols]
    print(f"device: {dname}")
    for r in [dict(zip(cols, cols))] + rows:
        print("  ".join(str(r[c]).ljust(wd) for c, wd in zip(cols, widths)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
