"""The prepared GPU check of issue 12: every stage of tusss timed once at the reference configuration.

Run by ``benchmarks/gpu_check.sh`` on the lent H200 (after the wheel install and ``pytest -m cuda``), or here with
``--dry-run`` (tiny sizes, CPU, same code path: this is what CI runs). Synthetic data of the real sizes, random
weights (nothing can be downloaded there). Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out`` (``$OUT``)
after every stage, so a run stopped by its time limit still returns what it measured.

Stages (issue 12's table; the anchors and goals are written beside each figure):

* ``masks``: SAM ViT-H, 32x32 points, 1 crop layer, 500x375 image: the reference path (eager fp32), the fast
  device path (``tusss.masks.amg_fast``, 1024-point batches) in fp32 and with the bf16 SDPA encoder
  (``tusss.masks.sam_precision``); mask agreement (IoU) of the fast paths against the reference path.
* ``clip``: DBA-CLIP ViT-B/16 ``reference`` preset (GSW: global pass + 224 windows at stride 56), ms/img for 64 masks,
  kernels ``auto`` (Triton on CUDA) and ``torch``.
* ``dba_last_block``: the dual-softmax last-block attention of all windows of one image in one batch: Triton kernel
  (also replayed from a CUDA graph) vs the PyTorch twin vs ``scaled_dot_product_attention`` with a float bias
  (fp32 and bf16) vs compiled FlexAttention, each with its relative error against the twin.
* ``knn_*``, ``lp_*``, ``glcc_inference``: from ``benchmarks/bench_glcc.py``'s ``gpu_stages(device, sizes)`` when
  it exists (rows: dicts with ``stage``, ``variant``, ``ms``, optional ``unit``, ``extrapolated``, ``note``), else
  the fallbacks here: exact kNN from float16 tiles + ``torch.topk`` (timed on a slice of the queries and
  extrapolated when the whole would overrun), the library's ``block_cg_torch`` on a random symmetric k-NN-like
  graph of the real size, and ``GLCC.predict_batch`` of a GLCC fitted on a smaller synthetic set.
* ``inductor``: rows of the block/compiler helper's function, if any: the first of ``gpu_check_rows`` /
  ``gpu_rows`` / ``gpu_stages`` found in ``tusss.engine.inductor`` or ``benchmarks/bench_engine.py``, called as
  ``fn(device, {"dry_run": bool, "budget_s": float})`` and returning row dicts (``variant``, ``ms``, ...) or a flat
  dict of ``*_s`` / ``*_ms`` figures.
* ``compile`` (last, only when time is left; skipped in the dry run): ``torch.compile`` of the bf16 SAM encoder,
  compile time and ms per 5-crop batch against eager.

Every stage has a time budget; a stage whose budget exceeds the time left is skipped and says so.
The torch on the GPU machine is 2.11: nothing here needs a newer API (FlexAttention is guarded).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: issue 12's table: stage key -> (what, anchor, goal, goal as a number in `unit`, unit)
ANCHORS: dict[str, tuple[str, str, str, float | None, str]] = {
    "masks": ("masks, SAM ViT-H, 32x32 points, 1 crop layer, 500x375 image",
              "SAM2.1-L automatic masks 120 ms/img on an H100 (torchao, published)", "<= 250 ms/img", 250.0, "ms/img"),
    "clip": ("DBA-CLIP with GSW (global + windows at stride 56)",
             "CLIP ViT-B/16 image 3.6 ms in TensorRT on a T4", "<= 8 ms/img", 8.0, "ms/img"),
    "knn_325k": ("kNN graph, 325k x 512, k 50", "paper Table S4: 4 s on an RTX 3090", "<= 0.5 s", 500.0, "ms"),
    "knn_4.66M": ("kNN graph, 4.66M x 512, k 50", "paper Table S4: 732 s on an RTX 3090", "<= 60 s", 60000.0, "ms"),
    "lp_325k": ("label propagation, 325k x 21", "paper: < 1 s", "<= 1 s", 1000.0, "ms"),
    "lp_4.66M": ("label propagation, 4.66M x 81", "paper: 22 s", "<= 1 s", 1000.0, "ms"),
    "glcc_inference": ("GLCC inference", "paper: 3.1 ms/img (VOC), 13.6 ms/img (COCO)", "<= 1 ms/img batched", 1.0,
                       "ms/img"),
    "dba_last_block": ("DBA last block: Triton vs torch twin vs SDPA", "-", "report", None, "ms"),
    "inductor": ("AOTInductor engine rows (block/compiler helper)", "-", "report", None, "ms"),
}

REAL = dict(
    sam="vit_h", image_hw=(375, 500), points_per_side=32, points_per_batch=1024, crop_n_layers=1, ref_repeats=2,
    clip_model="ViT-B-16", clip_masks=64, clip_repeats=10,
    knn=[("knn_325k", 325_000, 512, 50), ("knn_4.66M", 4_660_000, 512, 50)],
    lp=[("lp_325k", 325_000, 21, 50), ("lp_4.66M", 4_660_000, 81, 50)],
    glcc_train=20_000, glcc_images=32, glcc_masks_per_image=50, glcc_classes=21,
    budgets=dict(masks=110, clip=35, dba_last_block=30, glcc_helper=100, knn=50, lp=35, glcc=15, inductor=25,
                 compile=70),
    knn_query_sample=16_384, mask_overrides={}, repeats=5,
)
DRY = dict(
    sam="vit_tiny", image_hw=(60, 80), points_per_side=4, points_per_batch=64, crop_n_layers=1, ref_repeats=1,
    clip_model="tusss-tiny", clip_masks=5, clip_repeats=1,
    knn=[("knn_325k", 3_000, 32, 10), ("knn_4.66M", 6_000, 32, 10)],
    lp=[("lp_325k", 3_000, 5, 10), ("lp_4.66M", 6_000, 7, 10)],
    glcc_train=600, glcc_images=4, glcc_masks_per_image=8, glcc_classes=4,
    budgets=dict(masks=30, clip=20, dba_last_block=10, glcc_helper=30, knn=10, lp=10, glcc=10, inductor=10,
                 compile=1000),
    knn_query_sample=1_000, mask_overrides=dict(pred_iou_thresh=0.0, stability_score_thresh=0.0), repeats=1,
)


class Check:
    """Collects rows, writes JSON + markdown after each stage, keeps the global deadline."""

    def __init__(self, out: Path, total_s: float, dry: bool, device: str) -> None:
        self.out, self.deadline, self.dry, self.device = out, time.monotonic() + total_s, dry, device
        self.rows: list[dict[str, Any]] = []
        self.stages: list[dict[str, Any]] = []
        self.meta = _env_info(device, dry)
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, stage: str, variant: str, value: float | None, unit: str = "ms", **extra: Any) -> None:
        row = dict(stage=stage, variant=variant, value=None if value is None else float(value), unit=unit, **extra)
        self.rows.append(row)
        shown = "-" if value is None else f"{value:.3f} {unit}"
        print(f"[gpu_check] {stage:16s} {variant:44s} {shown} {extra.get('note', '')}", flush=True)

    def run(self, name: str, budget_s: float, fn: Callable[[Check, float], None]) -> None:
        t0 = time.monotonic()
        if self.left() < budget_s:
            self.stages.append(dict(stage=name, status="skipped", reason=f"budget {budget_s:.0f} s > time left "
                                                                            f"{self.left():.0f} s"))
            print(f"[gpu_check] SKIP {name}: budget {budget_s:.0f} s > {self.left():.0f} s left", flush=True)
        else:
            try:
                fn(self, budget_s)
                self.stages.append(dict(stage=name, status="ok", seconds=round(time.monotonic() - t0, 2)))
            except Exception as e:  # one broken stage never stops the check
                tb = traceback.format_exc(limit=6)
                self.stages.append(dict(stage=name, status="error", seconds=round(time.monotonic() - t0, 2),
                                        error=f"{type(e).__name__}: {e}", traceback=tb))
                print(f"[gpu_check] ERROR {name}: {type(e).__name__}: {e}\n{tb}", flush=True)
            finally:
                _free(self.device)
        self.write()

    def write(self) -> None:
        data = dict(meta=self.meta, stages=self.stages, rows=self.rows, anchors={
            k: dict(what=a[0], anchor=a[1], goal=a[2], goal_value=a[3], unit=a[4]) for k, a in ANCHORS.items()})
        tmp = self.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(data, indent=1, default=str))
        tmp.replace(self.out / "gpu_check.json")
        (self.out / "gpu_check.md").write_text(markdown(data))


def markdown(data: dict[str, Any]) -> str:
    """Issue 12's table with the best measured figure of each stage, then every row, then the stage log."""
    rows = data["rows"]
    m = data["meta"]
    lines = [f"# tusss GPU check ({'DRY RUN, tiny sizes, ' if m['dry_run'] else ''}{m['device_name']}, "
             f"torch {m['torch']}, {m['date']})", "",
             "| stage | anchor | goal | measured (best variant) | goal met |", "| --- | --- | --- | --- | --- |"]
    for key, (what, anchor, goal, gv, unit) in ANCHORS.items():
        cand = [r for r in rows if r["stage"] == key and r["value"] is not None and not r.get("aux")]
        if not cand:
            lines.append(f"| {what} | {anchor} | {goal} | not measured | - |")
            continue
        best = min(cand, key=lambda r: r["value"])
        ext = " (extrapolated)" if best.get("extrapolated") else ""
        met = "-" if gv is None or best["unit"] != unit else ("yes" if best["value"] <= gv else "no")
        if m["dry_run"]:
            met = "- (dry run)"
        lines.append(f"| {what} | {anchor} | {goal} | {best['value']:.3f} {best['unit']}{ext}, {best['variant']} "
                     f"| {met} |")
    lines += ["", "## All rows", "", "| stage | variant | value | unit | note |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        v = "-" if r["value"] is None else f"{r['value']:.4g}"
        note = r.get("note", "") + (" (extrapolated)" if r.get("extrapolated") else "")
        lines.append(f"| {r['stage']} | {r['variant']} | {v} | {r['unit']} | {note} |")
    lines += ["", "## Stages", "", "| stage | status | seconds | detail |", "| --- | --- | --- | --- |"]
    for s in data["stages"]:
        lines.append(f"| {s['stage']} | {s['status']} | {s.get('seconds', '-')} | "
                     f"{s.get('reason', s.get('error', ''))} |")
    lines += ["", "Machine: " + json.dumps({k: v for k, v in m.items() if k != "date"})]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- helpers


def _env_info(device: str, dry: bool) -> dict[str, Any]:
    info: dict[str, Any] = dict(dry_run=dry, device=device, torch=torch.__version__, python=platform.python_version(),
                                date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                cpu_count=os.cpu_count(), device_name="cpu")
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        info.update(device_name=p.name, sm_count=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}", cuda=torch.version.cuda)
    for mod in ("triton", "segment_anything", "open_clip", "torchvision"):
        try:
            info[mod] = getattr(__import__(mod), "__version__", "present")
        except Exception as e:  # report, do not fail
            info[mod] = f"missing ({type(e).__name__})"
    return info


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def timeit(fn: Callable[[], Any], device: str, *, warmup: int = 1, repeats: int = 5, max_s: float = 30.0
           ) -> tuple[float, Any]:
    """Median wall time (ms) of ``fn`` after ``warmup`` calls (device synchronised around each), at most ``max_s``
    seconds of repeats (at least one); returns (median ms, last result)."""
    out = None
    for _ in range(warmup):
        out = fn()
    _sync(device)
    ts: list[float] = []
    t_end = time.monotonic() + max_s
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        ts.append((time.perf_counter() - t0) * 1e3)
        if time.monotonic() > t_end:
            break
    return float(np.median(ts)), out


def _scene(hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A (H, W, 3) uint8 synthetic photo-like image: smooth colour regions + noise (never all zeros)."""
    rng = np.random.default_rng(seed)
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.float32) + rng.uniform(40, 200, 3)
    for _ in range(12):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.3) * min(h, w)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _blob_masks(hw: tuple[int, int], m: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((m, h, w), bool)
    for i in range(m):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.03, 0.4) * h, rng.uniform(0.03, 0.4) * w
        out[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        out[i, int(cy) % h, int(cx) % w] = True
    return out


def _mask_agreement(ref, got) -> dict[str, float]:
    """Share of reference masks matched (same level) by a mask with IoU >= 0.9, and the mean best IoU."""
    if len(ref) == 0:
        return dict(n_ref=0, n_got=len(got), matched_0_9=1.0 if len(got) == 0 else 0.0, mean_best_iou=1.0)
    a = torch.from_numpy(ref.masks.reshape(len(ref), -1)).float()
    b = torch.from_numpy(got.masks.reshape(len(got), -1)).float()
    if len(got) == 0:
        return dict(n_ref=len(ref), n_got=0, matched_0_9=0.0, mean_best_iou=0.0)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    iou = (inter / union.clamp_min(1)).numpy()
    iou[ref.level[:, None] != got.level[None]] = 0
    best = iou.max(1)
    return dict(n_ref=len(ref), n_got=len(got), matched_0_9=float((best >= 0.9).mean()),
                mean_best_iou=float(best.mean()))


# ----------------------------------------------------------------------------------------------- stages


def stage_masks(ck: Check, budget: float, S: dict) -> None:
    from tusss.masks import MaskGenerator, preset_config
    from tusss.masks.sam_precision import LowPrecisionSamBackend
    from tusss.masks.sam_registry import SAM_MODELS

    dev = ck.device
    t0 = time.monotonic()
    torch.manual_seed(0)
    with torch.device(dev):  # random init directly on the device (ViT-H: 636 M parameters)
        sam = SAM_MODELS[S["sam"]].builder()
    sam.eval()
    ck.add("masks", "build random SAM", (time.monotonic() - t0) * 1e3, "ms", aux=True, note=S["sam"])
    img = _scene(S["image_hw"])
    cfg = preset_config("tuss", points_per_side=S["points_per_side"], points_per_batch=S["points_per_batch"],
                        crop_n_layers=S["crop_n_layers"], **S["mask_overrides"])
    note = f"{S['sam']} random weights, {S['points_per_side']}^2 points, {S['crop_n_layers']} crop layer, " \
           f"{S['image_hw'][1]}x{S['image_hw'][0]}"
    per = budget / 5
    ref_gen = MaskGenerator(sam, cfg.replace(points_per_batch=min(256, S["points_per_batch"])))
    ms_ref, ref = timeit(lambda: ref_gen.generate(img), dev, warmup=1, repeats=S["ref_repeats"], max_s=per)
    ck.add("masks", "reference path, eager fp32", ms_ref, "ms/img", note=f"{note}; {len(ref)} masks")
    fast = MaskGenerator(sam, cfg, amg="fast")
    ms_fast, got = timeit(lambda: fast.generate(img), dev, warmup=1, repeats=S["repeats"], max_s=per)
    ck.add("masks", "fast path, fp32", ms_fast, "ms/img", note=f"{len(got)} masks",
           **{"agreement_vs_reference": _mask_agreement(ref, got)})
    for prec in ("bf16", "fp16") if dev.startswith("cuda") else ("bf16",):
        if ck.left() < per:
            ck.add("masks", f"fast path, {prec} SDPA encoder", None, "ms/img", note="skipped: time")
            continue
        # (weights_id given: hashing 636 M parameters for a cache key would cost seconds of the budget)
        lp = MaskGenerator(sam, cfg, amg="fast", weights_id="random", backend=LowPrecisionSamBackend(sam, prec))
        ms_lp, got_lp = timeit(lambda lp=lp: lp.generate(img), dev, warmup=1, repeats=S["repeats"], max_s=per / 2)
        ck.add("masks", f"fast path, {prec} SDPA encoder, fp32 LayerNorm", ms_lp, "ms/img", note=f"{len(got_lp)} masks",
               **{"agreement_vs_reference": _mask_agreement(ref, got_lp)})
        del lp
    # upper bound of the post-processing: every candidate passes the thresholds (random weights pass few)
    if ck.left() > per and not S["mask_overrides"]:
        stress = MaskGenerator(sam, cfg.replace(pred_iou_thresh=0.0, stability_score_thresh=0.0, points_per_batch=256),
                               amg="fast", weights_id="random", backend=LowPrecisionSamBackend(sam, "bf16"))
        ms_s, got_s = timeit(lambda: stress.generate(img), dev, warmup=1, repeats=3, max_s=per / 2)
        ck.add("masks", "fast path, bf16, thresholds off (post-processing upper bound)", ms_s, "ms/img", aux=True,
               note=f"{len(got_s)} masks, cc host fallbacks {stress._amg.stats['cc_host_fallbacks']}")
        del stress
    # the encoder alone (all crops of the image in one batch), fp32 vs bf16: where the time goes
    n_crops = 1 + (4 if S["crop_n_layers"] else 0)
    s = sam.image_encoder.img_size
    x = torch.randn(n_crops, 3, s, s, device=dev)
    with torch.no_grad():
        ms_e, _ = timeit(lambda: sam.image_encoder(x), dev, warmup=1, repeats=3, max_s=per / 4)
        ck.add("masks", f"encoder only, {n_crops} crops in one batch, fp32", ms_e, "ms", aux=True)
        from tusss.masks.sam_precision import lowp_image_encoder

        enc = lowp_image_encoder(sam.image_encoder, "bf16")
        ms_b, _ = timeit(lambda: enc(x), dev, warmup=1, repeats=3, max_s=per / 4)
        ck.add("masks", f"encoder only, {n_crops} crops in one batch, bf16 SDPA", ms_b, "ms", aux=True)


def stage_clip(ck: Check, budget: float, S: dict) -> None:
    from tusss.clip.model import DBAClip

    dev = ck.device
    torch.manual_seed(0)
    clip = DBAClip.from_pretrained(S["clip_model"], weights=None, preset="reference", device=dev)
    img = _scene(S["image_hw"], 1)
    masks = _blob_masks(S["image_hw"], S["clip_masks"])
    lay = clip.layout(S["image_hw"])
    note = f"{S['clip_model']} random weights, {S['clip_masks']} masks, {lay.n_windows} windows + global " \
           f"{lay.resized_hw}"
    old = os.environ.get("TUSSS_KERNELS")
    try:
        for kern in ("auto", "torch"):
            os.environ["TUSSS_KERNELS"] = kern
            ms, emb = timeit(lambda: clip.embed_masks(img, masks), dev, warmup=1, repeats=S["clip_repeats"],
                             max_s=budget / 3)
            ck.add("clip", f"embed_masks, kernels={kern}", ms, "ms/img", note=note)
            assert np.isfinite(emb).all() and emb.shape == (len(masks), clip.embed_dim)
    finally:
        if old is None:
            os.environ.pop("TUSSS_KERNELS", None)
        else:
            os.environ["TUSSS_KERNELS"] = old


def stage_dba_block(ck: Check, budget: float, S: dict) -> None:
    """Last-block dual-softmax attention of all windows of one image in one batch, four ways."""
    import torch.nn.functional as F

    from tusss.clip.config import DBAClipConfig
    from tusss.clip.gsw import make_layout
    from tusss.kernels import masked_dual_attention
    from tusss.kernels.attention_torch import build_attention_bias

    dev = ck.device
    lay = make_layout(*S["image_hw"], DBAClipConfig.preset("reference"))
    dry = ck.dry
    heads, hd, win = (2, 16, 64) if dry else (12, 64, 224)
    L = (win // 16) ** 2 + 1
    B = max(1, lay.n_windows)
    M = S["clip_masks"]
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(B, heads, L, hd, generator=g).to(dev) for _ in range(3))
    tm = (torch.rand(B, M, L - 1, generator=g) < 0.15).to(dev)
    note = f"B={B} windows, heads={heads}, L={L}, head_dim={hd}, M={M} masks"
    ref = masked_dual_attention(q, k, v, tm, backend="torch")
    per = budget / 8

    def err(o: torch.Tensor) -> float:
        return float((o.float() - ref).norm() / ref.norm())

    ms, o = timeit(lambda: masked_dual_attention(q, k, v, tm, backend="torch"), dev, repeats=20, max_s=per)
    ck.add("dba_last_block", "torch twin fp32 (bitsets)", ms, "ms", note=note)
    if dev.startswith("cuda"):
        ms, o = timeit(lambda: masked_dual_attention(q, k, v, tm, backend="triton"), dev, repeats=20, max_s=per)
        ck.add("dba_last_block", "Triton kernel fp32", ms, "ms", rel_err=err(o), note=f"rel err {err(o):.2e}")
    else:
        ck.add("dba_last_block", "Triton kernel fp32", None, "ms", note="needs CUDA")
    bias = build_attention_bias(tm)[:, None]  # (B, 1, L, L) float

    def sdpa(qq, kk, vv, bb):
        return F.scaled_dot_product_attention(qq, qq, vv, attn_mask=bb) + F.scaled_dot_product_attention(
            kk, kk, vv, attn_mask=bb)

    ms, o = timeit(lambda: sdpa(q, k, v, bias), dev, repeats=20, max_s=per)
    ck.add("dba_last_block", "SDPA float bias fp32", ms, "ms", rel_err=err(o), note=f"rel err {err(o):.2e}")
    ms_b, o = timeit(lambda: sdpa(q, k, v, build_attention_bias(tm)[:, None]), dev, repeats=20, max_s=per)
    ck.add("dba_last_block", "SDPA float bias fp32 incl. bias build", ms_b, "ms", note=f"rel err {err(o):.2e}")
    lp = torch.bfloat16
    qb, kb, vb, bb = q.to(lp), k.to(lp), v.to(lp), bias.to(lp)
    ms, o = timeit(lambda: sdpa(qb, kb, vb, bb), dev, repeats=20, max_s=per)
    ck.add("dba_last_block", "SDPA float bias bf16", ms, "ms", rel_err=err(o), note=f"rel err {err(o):.2e}")
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except Exception as e:  # torch < 2.5
        ck.add("dba_last_block", "FlexAttention", None, "ms", note=f"unavailable: {type(e).__name__}")
        return
    if not dev.startswith("cuda"):
        ck.add("dba_last_block", "FlexAttention", None, "ms", note="compiled FlexAttention needs CUDA here")
        return
    b2 = bias[:, 0].contiguous()

    def score_mod(score, b, h, qi, ki):
        return score + b2[b, qi, ki]

    flex = torch.compile(flex_attention, dynamic=False)
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if ck.left() < 60:
            ck.add("dba_last_block", f"FlexAttention {name}", None, "ms", note="skipped: compile time")
            continue
        qq, kk, vv = q.to(dt), k.to(dt), v.to(dt)
        ms, o = timeit(lambda qq=qq, kk=kk, vv=vv: flex(qq, qq, vv, score_mod=score_mod)
                       + flex(kk, kk, vv, score_mod=score_mod), dev, warmup=2, repeats=20, max_s=per)
        ck.add("dba_last_block", f"FlexAttention {name} (compiled, bias via score_mod)", ms, "ms", rel_err=err(o),
               note=f"rel err {err(o):.2e}")


def stage_dba_graph(ck: Check, budget: float, S: dict) -> None:
    """Launch overhead of the DBA last block: the Triton call captured once in a CUDA graph, timed by replay (its
    own stage, late in the run: a failed capture must not disturb the other stages)."""
    from tusss.clip.config import DBAClipConfig
    from tusss.clip.gsw import make_layout
    from tusss.kernels import masked_dual_attention

    dev = ck.device
    if not dev.startswith("cuda"):
        ck.add("dba_last_block", "Triton kernel fp32, CUDA graph replay", None, "ms", note="needs CUDA")
        return
    B = max(1, make_layout(*S["image_hw"], DBAClipConfig.preset("reference")).n_windows)
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(B, 12, 197, 64, generator=g).to(dev) for _ in range(3))
    tm = (torch.rand(B, S["clip_masks"], 196, generator=g) < 0.15).to(dev)
    ref = masked_dual_attention(q, k, v, tm, backend="torch")
    per = budget

    def err(o: torch.Tensor) -> float:
        return float((o.float() - ref).norm() / ref.norm())

    try:  # launch overhead: the same call captured once in a CUDA graph, timed by replay
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                masked_dual_attention(q, k, v, tm, backend="triton")
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            o_g = masked_dual_attention(q, k, v, tm, backend="triton")
        ms, _ = timeit(graph.replay, dev, repeats=50, max_s=per)
        ck.add("dba_last_block", "Triton kernel fp32, CUDA graph replay", ms, "ms", rel_err=err(o_g),
               note=f"rel err {err(o_g):.2e}")
    except Exception as e:  # e.g. a host sync inside the op: not capturable
        ck.add("dba_last_block", "Triton kernel fp32, CUDA graph replay", None, "ms",
               note=f"capture failed: {type(e).__name__}: {str(e)[:120]}")


def _load_bench_glcc():
    p = ROOT / "benchmarks" / "bench_glcc.py"
    spec = importlib.util.spec_from_file_location("tusss_bench_glcc", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def stage_glcc_helper(ck: Check, budget: float, S: dict) -> bool:
    """Rows from ``bench_glcc.gpu_stages(device, sizes) -> dict`` (the label-propagation helper's timings of
    knn_tiled, knn_graph_torch + propagate_torch, GLCC.predict_batch); False when the function does not exist.

    Called once per size, smallest first, so that the next size's duration can be predicted (exact kNN: quadratic
    in N; LP: host data linear in N, the solve linear in N x K) and a size that would overrun the budget is
    reported as extrapolated instead of run."""
    mod = _load_bench_glcc()
    fn = getattr(mod, "gpu_stages", None)
    if fn is None:
        return False
    sizes = mod.GPU_SIZES["tiny" if ck.dry else "real"]
    dev = ck.device
    t_end = time.monotonic() + min(budget, ck.left() - 10)
    src = dict(source="bench_glcc.gpu_stages")
    prev = None  # (n, seconds of the kNN)
    for i, (n, d, k) in enumerate(sizes.get("knn", [])):
        key = ("knn_325k", "knn_4.66M")[min(i, 1)]
        left = t_end - time.monotonic()
        if prev is not None:
            pred = prev[1] * (n / prev[0]) ** 2
            if pred > 0.8 * left:
                ck.add(key, "knn_tiled (fp16 products on CUDA)", pred * 1e3, "ms", extrapolated=True,
                       note=f"N={n}, D={d}, k={k}: predicted from N={prev[0]} (quadratic), {left:.0f} s left", **src)
                continue
        r = fn(dev, {"knn": [(n, d, k)]})
        t = float(r[f"knn_{n}_s"])
        ck.add(key, "knn_tiled (fp16 products on CUDA)", t * 1e3, "ms", note=f"N={n}, D={d}, k={k}", **src)
        prev = (n, t)
    prev_lp = None  # (n, K, wall seconds of the call, LP seconds)
    for i, (n, K, k) in enumerate(sizes.get("lp", [])):
        key = ("lp_325k", "lp_4.66M")[min(i, 1)]
        left = t_end - time.monotonic()
        if prev_lp is not None:
            n0, K0, wall0, lp0 = prev_lp
            pred_wall = (wall0 - lp0) * n / n0 + lp0 * (n * K) / (n0 * K0)
            if pred_wall > 0.8 * left:
                ck.add(key, "propagate_torch block CG (solve only)", lp0 * 1e3 * (n * K) / (n0 * K0), "ms",
                       extrapolated=True, **src,
                       note=f"N={n}, K={K}, k={k}: predicted from N={n0}, K={K0} (linear in N x K); "
                            f"the whole call would take ~{pred_wall:.0f} s, {left:.0f} s left")
                continue
        t0 = time.monotonic()
        r = fn(dev, {"lp": [(n, K, k)]})
        wall = time.monotonic() - t0
        lp_s = float(r[f"lp_{n}x{K}_s"])
        ck.add(key, "propagate_torch block CG (solve only)", lp_s * 1e3, "ms",
               note=f"N={n}, K={K}, k={k}; {r.get(f'lp_{n}x{K}_iterations')} iterations; graph assembly on the "
                    f"device {float(r.get(f'graph_{n}_s', float('nan'))) * 1e3:.0f} ms", **src)
        prev_lp = (n, K, wall, lp_s)
    ind = sizes.get("inductive")
    if ind:
        if t_end - time.monotonic() < 15 and not ck.dry:
            ck.add("glcc_inference", "GLCC.predict_batch", None, "ms/img", note="skipped: time", **src)
        else:
            r = fn(dev, {"inductive": ind})
            ck.add("glcc_inference", f"GLCC.predict_batch, warm device index, {r.get('inductive_batch_images')} images "
                   "per call", float(r["inductive_ms_per_image"]), "ms/img",
                   note=f"{ind['n_train']} training masks, {ind['masks']} masks per image, K={ind['K']}", **src)
    return True


def stage_knn_fallback(ck: Check, budget: float, S: dict) -> None:
    """Exact kNN from float16 tiles + torch.topk; a slice of the queries is timed and the whole extrapolated when
    it would not fit the budget."""
    dev = ck.device
    half = dev.startswith("cuda")
    for key, n, d, k in S["knn"]:
        t_left = min(budget / len(S["knn"]), ck.left() - 10)
        g = torch.Generator(device=dev).manual_seed(0)
        X = torch.empty(n, d, dtype=torch.float16 if half else torch.float32, device=dev)
        step = 1 << 20
        centers = torch.randn(512, d, device=dev, generator=g)
        for s in range(0, n, step):  # clustered rows, normalised
            e = min(n, s + step)
            c = centers[torch.randint(0, 512, (e - s,), device=dev, generator=g)]
            blk = c + 0.5 * torch.randn(e - s, d, device=dev, generator=g)
            X[s:e] = torch.nn.functional.normalize(blk, dim=1).to(X.dtype)
        tile = 4096 if half else 512
        chunk = 1 << 20  # database rows per product: a (tile, chunk) similarity tile at most
        nq = min(n, S["knn_query_sample"])

        def run(nrows: int, X: torch.Tensor = X, tile: int = tile, chunk: int = chunk, k: int = k) -> None:
            for s in range(0, nrows, tile):
                q = X[s : s + tile]
                vals, idxs = [], []
                for c in range(0, X.shape[0], chunk):
                    v_, i_ = torch.topk(q @ X[c : c + chunk].T, min(k + 1, X.shape[0] - c), dim=1)
                    vals.append(v_)
                    idxs.append(i_ + c)
                if len(vals) > 1:  # merge the per-chunk candidates
                    v_, j = torch.topk(torch.cat(vals, 1), k + 1, dim=1)
                    torch.gather(torch.cat(idxs, 1), 1, j)

        run(min(nq, tile))  # warm-up
        _sync(dev)
        t0 = time.perf_counter()
        run(nq)
        _sync(dev)
        ms_sample = (time.perf_counter() - t0) * 1e3
        full = ms_sample * n / nq
        ext = nq < n
        if ext and full / 1e3 < 0.6 * t_left:
            t0 = time.perf_counter()
            run(n)
            _sync(dev)
            full, ext = (time.perf_counter() - t0) * 1e3, False
        ck.add(key, f"exact, {'fp16' if half else 'fp32'} tiles + torch.topk (fallback)", full, "ms",
               extrapolated=ext, note=f"N={n}, D={d}, k={k}; {nq} queries timed in {ms_sample:.0f} ms")
        del X
        _free(dev)


def _random_graph(n: int, k: int, dev: str, seed: int = 0):
    """Symmetric normalised affinity S = D^-1/2 (W + W^T) D^-1/2 of a random clustered k-NN-like graph, as a
    float32 sparse CSR tensor on ``dev`` (N x N, about 2 N k non-zeros)."""
    g = torch.Generator(device=dev).manual_seed(seed)
    rows = torch.arange(n, device=dev).repeat_interleave(k)
    # neighbours mostly within a block of 2048 consecutive nodes (clusters), some anywhere
    local = (rows // 2048) * 2048 + torch.randint(0, 2048, rows.shape, device=dev, generator=g)
    far = torch.randint(0, n, rows.shape, device=dev, generator=g)
    cols = torch.where(torch.rand(rows.shape, device=dev, generator=g) < 0.9, local.clamp_max(n - 1), far)
    w = torch.rand(rows.shape, device=dev, generator=g) ** 3 + 0.01
    ok = rows != cols
    r = torch.cat([rows[ok], cols[ok]])
    c = torch.cat([cols[ok], rows[ok]])
    w = torch.cat([w[ok], w[ok]])
    W = torch.sparse_coo_tensor(torch.stack([r, c]), w, (n, n)).coalesce()
    deg = torch.zeros(n, device=dev).index_add_(0, W.indices()[0], W.values())
    dinv = deg.clamp_min(1e-12).rsqrt()
    vals = W.values() * dinv[W.indices()[0]] * dinv[W.indices()[1]]
    S = torch.sparse_coo_tensor(W.indices(), vals, (n, n)).coalesce().to_sparse_csr()
    return S


def stage_lp_fallback(ck: Check, budget: float, S_: dict) -> None:
    """The library's block CG (tusss.glcc.propagation.block_cg_torch) on the device, alpha 0.9, tol 1e-6."""
    from tusss.glcc.propagation import block_cg_torch

    dev = ck.device
    for key, n, kcls, k in S_["lp"]:
        if ck.left() < budget / 2 and not ck.dry:
            ck.add(key, "block CG (fallback)", None, "ms", note="skipped: time")
            continue
        t0 = time.perf_counter()
        S = _random_graph(n, k, dev)
        _sync(dev)
        t_graph = (time.perf_counter() - t0) * 1e3
        g = torch.Generator(device=dev).manual_seed(1)
        P = torch.rand(n, kcls, device=dev, generator=g)
        P = P / P.sum(1, keepdim=True)
        def matvec(V: torch.Tensor, S: torch.Tensor = S, alpha: float = 0.9) -> torch.Tensor:
            return V - alpha * (S @ V)

        ms, res = timeit(lambda P=P, matvec=matvec: block_cg_torch(matvec, P, tol=1e-6, maxiter=200, warn=False),
                         dev, warmup=1, repeats=3, max_s=budget / 4)
        X = res[0] if isinstance(res, tuple) else res
        rel = float((matvec(X) - P).norm() / P.norm())
        ck.add(key, "block CG on device, fp32 CSR (fallback, random graph)", ms, "ms",
               note=f"N={n}, K={kcls}, nnz={S.values().numel()}, graph built in {t_graph:.0f} ms, "
                    f"residual {rel:.1e}")
        del S, P
        _free(dev)


def stage_glcc_fallback(ck: Check, budget: float, S: dict) -> None:
    """GLCC.predict_batch on the device after a fit on a synthetic training set of S['glcc_train'] masks."""
    from tusss.glcc.model import GLCC, GLCCConfig
    from tusss.glcc.probe import ProbeConfig

    rng = np.random.default_rng(0)
    K, D, N = S["glcc_classes"], 512 if not ck.dry else 32, S["glcc_train"]
    centers = rng.normal(size=(K, D)).astype(np.float32)
    y = rng.integers(0, K, N)
    X = (centers[y] + 0.8 * rng.normal(size=(N, D))).astype(np.float32)
    per_img = 25
    ids = np.arange(N) // per_img
    Y = np.eye(K, dtype=np.float32)[y]
    t0 = time.perf_counter()
    m = GLCC(GLCCConfig(probe=ProbeConfig(iters=50 if ck.dry else 300))).fit(X, None, ids, "full", gt_fractions=Y)
    t_fit = (time.perf_counter() - t0) * 1e3
    ck.add("glcc_inference", "GLCC.fit (context)", t_fit, "ms", aux=True, note=f"N={N}, K={K}, D={D}")
    nimg, mpi = S["glcc_images"], S["glcc_masks_per_image"]
    batch = [(centers[rng.integers(0, K, mpi)] + 0.8 * rng.normal(size=(mpi, D))).astype(np.float32)
             for _ in range(nimg)]
    ms, out = timeit(lambda: m.predict_batch(batch), ck.device, warmup=1, repeats=10, max_s=budget / 3)
    assert len(out) == nimg and all(np.isfinite(o).all() for o in out)
    ck.add("glcc_inference", f"GLCC.predict_batch, {nimg} images x {mpi} masks", ms / nimg, "ms/img",
           note=f"train N={N} (not the 325k of VOC: fallback), knn backend {m.config.knn_backend}")


#: where the block/compiler helper's GPU rows may live, and the function names looked for (first found is used)
INDUCTOR_SOURCES = ("tusss.engine.inductor", "benchmarks/bench_engine.py")
INDUCTOR_FUNCS = ("gpu_check_rows", "gpu_rows", "gpu_stages")


def _rows_from(result: Any) -> list[dict[str, Any]]:
    """Normalise a helper's result: a list of row dicts, or a flat dict (``*_s`` seconds, ``*_ms`` milliseconds)."""
    if isinstance(result, dict):
        rows = []
        for k, v in result.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if k.endswith("_ms"):
                    rows.append(dict(variant=k[:-3], ms=float(v)))
                elif k.endswith("_s"):
                    rows.append(dict(variant=k[:-2], ms=float(v) * 1e3))
        return rows
    return [dict(r) for r in (result or [])]


def stage_inductor(ck: Check, budget: float, S: dict) -> None:
    fn, where = None, []
    for src in INDUCTOR_SOURCES:
        try:
            if src.endswith(".py"):
                p = ROOT / src
                spec = importlib.util.spec_from_file_location("tusss_gpu_check_" + p.stem, p)
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)  # type: ignore[union-attr]
            else:
                mod = importlib.import_module(src)
        except Exception as e:
            where.append(f"{src}: {type(e).__name__}")
            continue
        fn = next((getattr(mod, n) for n in INDUCTOR_FUNCS if callable(getattr(mod, n, None))), None)
        if fn is not None:
            break
        where.append(f"{src}: no {'/'.join(INDUCTOR_FUNCS)}")
    if fn is None:
        ck.add("inductor", "inductor rows", None, note="not present (" + "; ".join(where) + ")")
        return
    for r in _rows_from(fn(ck.device, dict(dry_run=ck.dry, budget_s=budget))):
        ck.add("inductor", str(r.pop("variant", r.pop("stage", "inductor"))), r.pop("ms", r.pop("value", None)),
               str(r.pop("unit", "ms")), source=getattr(fn, "__module__", ""), **r)


def stage_compile(ck: Check, budget: float, S: dict) -> None:
    """Optional torch.compile of the bf16 SDPA SAM encoder (does compiling pay?): compile time and ms per batch."""
    from tusss.masks.sam_precision import lowp_image_encoder
    from tusss.masks.sam_registry import SAM_MODELS

    dev = ck.device
    torch.manual_seed(0)
    with torch.device(dev):
        sam = SAM_MODELS[S["sam"]].builder()
    sam.eval()
    enc = lowp_image_encoder(sam.image_encoder, "bf16")
    n_crops = 1 + (4 if S["crop_n_layers"] else 0)
    s = sam.image_encoder.img_size
    x = torch.randn(n_crops, 3, s, s, device=dev)
    with torch.no_grad():
        ms_eager, ref = timeit(lambda: enc(x), dev, warmup=1, repeats=3, max_s=budget / 6)
        ck.add("masks", f"encoder only, {n_crops} crops, bf16 SDPA eager (compile baseline)", ms_eager, "ms", aux=True)
        comp = torch.compile(enc, dynamic=False)
        t0 = time.perf_counter()
        out = comp(x)
        _sync(dev)
        t_comp = time.perf_counter() - t0
        ms_c, out = timeit(lambda: comp(x), dev, warmup=1, repeats=3, max_s=budget / 6)
    rel = float((out - ref).norm() / ref.norm())
    ck.add("masks", f"encoder only, {n_crops} crops, bf16 SDPA torch.compile", ms_c, "ms", aux=True,
           note=f"first call (compile) {t_comp:.1f} s; rel diff to eager {rel:.1e}")


# ----------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (what CI runs)")
    ap.add_argument("--out", default=os.environ.get("OUT", "out/gpu_check"), help="folder for JSON + markdown")
    ap.add_argument("--total-s", type=float, default=None,
                    help="time for all stages (default 300 s; dry run 120 s); stages that would overrun are skipped")
    ap.add_argument("--device", default=None, help="default: cuda when available (never in --dry-run)")
    ap.add_argument("--glcc-fallback", action="store_true",
                    help="time kNN / LP / GLCC with this script's fallbacks even when bench_glcc.gpu_stages exists")
    ap.add_argument("--stages", default="masks,clip,dba_last_block,knn,lp,glcc,inductor,compile",
                    help="comma-separated subset")
    a = ap.parse_args(argv)
    dev = "cpu" if a.dry_run else (a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not a.dry_run and not dev.startswith("cuda"):
        print("[gpu_check] no CUDA device: use --dry-run for the CPU rehearsal", file=sys.stderr)
        return 2
    S = DRY if a.dry_run else REAL
    total = a.total_s if a.total_s is not None else (120.0 if a.dry_run else 300.0)
    ck = Check(Path(a.out), total, a.dry_run, dev)
    if dev.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows are fp32 (the reference arithmetic)
    want = set(a.stages.split(","))
    B = S["budgets"]
    with contextlib.ExitStack():
        if "masks" in want:
            ck.run("masks", B["masks"], lambda c, b: stage_masks(c, b, S))
        if "clip" in want:
            ck.run("clip", B["clip"], lambda c, b: stage_clip(c, b, S))
        if "dba_last_block" in want:
            ck.run("dba_last_block", B["dba_last_block"], lambda c, b: stage_dba_block(c, b, S))
        used_helper = False
        if want & {"knn", "lp", "glcc"} and not a.glcc_fallback:
            holder: dict[str, bool] = {}
            ck.run("bench_glcc.gpu_stages", B["glcc_helper"],
                   lambda c, b: holder.__setitem__("ok", stage_glcc_helper(c, b, S)))
            used_helper = holder.get("ok", False)
        if not used_helper or a.dry_run:  # the dry run rehearses the fallbacks too
            if "knn" in want:
                ck.run("knn (fallback)", B["knn"], lambda c, b: stage_knn_fallback(c, b, S))
            if "lp" in want:
                ck.run("lp (fallback)", B["lp"], lambda c, b: stage_lp_fallback(c, b, S))
            if "glcc" in want:
                ck.run("glcc (fallback)", B["glcc"], lambda c, b: stage_glcc_fallback(c, b, S))
        if "inductor" in want:
            ck.run("inductor", B["inductor"], lambda c, b: stage_inductor(c, b, S))
        if "dba_last_block" in want:
            ck.run("dba_cuda_graph", 15, lambda c, b: stage_dba_graph(c, b, S))
        if "compile" in want:  # last: only when time is left
            ck.run("compile", B["compile"], lambda c, b: stage_compile(c, b, S))
    ck.write()
    print((ck.out / "gpu_check.md").read_text())
    bad = [s for s in ck.stages if s["status"] == "error"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
