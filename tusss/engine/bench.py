"""``tusss-engine bench``: per-stage timings of the open-vocabulary pipeline, per backend.

Stages per image (docs/reference-code.md §1-5): ``masks`` (SAM automatic mask generation), ``embeddings`` (DBA-CLIP
with GSW over the image's masks), ``classification`` (100 * cos against the vocabulary's text
embeddings, docs/reference-code.md §5 scoring, label painting). The text embeddings are computed once per vocabulary
(``text`` row, setup) and building an engine is timed apart (``build`` row, setup).

With random weights SAM's predicted IoUs rarely pass the preset thresholds; when an image gets no mask the
embedding stage uses a fixed grid of rectangular masks instead (``mask_source`` says which), so that the
embedding and classification stages are always measured on a realistic number of masks.

Each backend also times :class:`tusss.Predictor` on the same models (``predictor``): end to end per image, and
on given masks against the hand-assembled path (its overhead); ``graph_calls`` counts the runs of each engine
graph (the SAM decoder graph included), so a row cannot silently fall back to PyTorch.

Backends: ``torch`` (PyTorch eager), ``onnxruntime`` (an engine built here, in a temporary directory or
``--engine-dir``), ``tensorrt`` (GPU only). All backends run the same seeded models on the same images.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tusss.errors import InputError

STAGES = ("masks", "embeddings", "classification")


# ---------------------------------------------------------------------------------------------- helpers
def synthetic_images(n: int, hw: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """``n`` (H, W, 3) uint8 images of smooth colour regions (blurred noise + a few filled shapes)."""
    import cv2

    rng = np.random.default_rng(seed)
    H, W = hw
    out = []
    for _ in range(n):
        img = cv2.GaussianBlur(rng.random((H, W, 3)).astype(np.float32), (0, 0), max(H, W) / 20)
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6) * 160 + 40
        for _ in range(6):
            c = tuple(float(x) for x in rng.integers(0, 256, 3))
            cx, cy = int(rng.integers(0, W)), int(rng.integers(0, H))
            r = int(rng.integers(min(H, W) // 12, min(H, W) // 4))
            if rng.random() < 0.5:
                cv2.circle(img, (cx, cy), r, c, -1)
            else:
                cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), c, -1)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def grid_masks(hw: tuple[int, int], rows: int = 4, cols: int = 6) -> Any:
    """A MaskSet of ``rows x cols`` disjoint rectangles covering the image (level 2)."""
    from tusss.masks.maskset import MaskSet

    H, W = hw
    ys = np.linspace(0, H, rows + 1).astype(int)
    xs = np.linspace(0, W, cols + 1).astype(int)
    m = np.zeros((rows * cols, H, W), bool)
    for i in range(rows):
        for j in range(cols):
            m[i * cols + j, ys[i]: ys[i + 1], xs[j]: xs[j + 1]] = True
    n = rows * cols
    return MaskSet(m, np.full(n, 2), np.ones(n), np.ones(n))


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except Exception:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak resident memory (CPU, sampled every 5 ms) and peak CUDA allocation during a ``with`` block."""

    def __init__(self) -> None:
        self.peak = 0
        self.cuda_peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self.peak = _rss()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())
        if torch.cuda.is_available():
            self.cuda_peak = int(torch.cuda.max_memory_allocated())


def summarize(times: list[float]) -> dict[str, float]:
    """median / p90 / mean seconds and images per second (1 / median)."""
    a = np.asarray(times, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    med = float(np.median(a))
    return {"n": int(a.size), "median_s": med, "p90_s": float(np.percentile(a, 90)), "mean_s": float(a.mean()),
            "images_per_s": (1.0 / med) if med > 0 else float("inf")}


# ---------------------------------------------------------------------------------------------- bench
@dataclass
class BenchConfig:
    sam: str = "vit_b"
    clip: str = "ViT-B-16"
    images: int = 3
    size: tuple[int, int] = (384, 512)  # (H, W)
    points_per_side: int = 8
    crop_layers: int = 0
    mask_preset: str = "tuss"
    clip_preset: str = "reference"
    vocabulary: str = "voc21"
    backends: tuple[str, ...] = ("torch",)
    precision: str = "fp32"
    engine_dir: str | None = None
    seed: int = 0
    threads: int = 0
    warmup: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _pipeline(cfg: BenchConfig, backend: str, models: Any, engine_root: Path, log) -> tuple[Any, Any, dict]:
    """(mask generator, DBAClip, setup timings) for one backend."""
    setup: dict[str, float] = {}
    gen, clip = models.mask_generator, models.dbaclip
    if backend == "torch":
        return gen, clip, setup
    from .build import build_engine
    from .runtime import Engine

    edir = engine_root / f"{backend}-{cfg.precision}"
    eng = None
    if (edir / "manifest.json").is_file():  # reuse an engine built earlier from the same models
        try:
            t0 = time.perf_counter()
            eng = Engine.load(edir, threads=cfg.threads)
            if eng.manifest.precision != cfg.precision:
                raise InputError("other precision")
            eng.check_sam(gen.sam)
            eng.check_clip(clip.model, clip.cfg)
            setup["build_s"] = 0.0
            setup["reused_engine"] = str(edir)  # type: ignore[assignment]
            log(f"[bench] reusing engine {edir}")
        except Exception as e:  # stale or foreign engine: rebuild it
            log(f"[bench] not reusing {edir}: {e}")
            eng = None
    if eng is None:
        t0 = time.perf_counter()
        build_engine(edir, sam=gen.sam, clip_model=clip.model, clip_config=clip.cfg, sam_info=models.sam_info,
                     clip_info=models.clip_info, precision=cfg.precision, backend=backend, log=log)
        setup["build_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        eng = Engine.load(edir, threads=cfg.threads)
    setup["load_s"] = time.perf_counter() - t0
    setup["providers"] = sorted({p for g in eng.graphs.values() for p in g.providers})  # type: ignore[assignment]
    return eng.attach(gen), eng.attach(clip), setup


def _predictor_rows(cfg: BenchConfig, gen: Any, clip: Any, seg: Any, images: list[np.ndarray], log, backend: str
                    ) -> dict[str, Any]:
    """``tusss.Predictor`` on the same generator / DBA-CLIP: end to end per image (SAM masks), and on given
    masks against the hand-assembled path (drop empty masks, embed, 100 cos, score, paint), interleaved per
    image so that both see the same machine load; overhead = median(predictor) / median(hand) - 1."""
    from tusss.classify import TextClassifier
    from tusss.labels import paint_labels
    from tusss.predictor import Predictor

    p = Predictor(gen, clip, TextClassifier(clip, vocabulary=cfg.vocabulary))
    p.classifier.warm_up()
    text = seg.text_embeddings()
    e2e, given_p, given_h = [], [], []
    for i, img in enumerate(images):
        rec = i >= cfg.warmup
        t0 = time.perf_counter()
        r = p.predict(img)
        t_e2e = time.perf_counter() - t0
        ms = r.masks if len(r.masks) else grid_masks(img.shape[:2])
        for order in (0, 1):  # hand path first on even images, predictor first on odd ones
            if (i + order) % 2 == 0:
                t0 = time.perf_counter()
                keep = np.flatnonzero(ms.masks.reshape(len(ms), -1).any(1))
                m2 = ms.subset(keep)
                emb = clip.embed_masks(img, m2.masks)
                _, labels, conf = seg.score(clip.logits(emb, text))
                paint_labels(m2.masks, labels, m2.level, conf, fill=seg.fill)
                t_h = time.perf_counter() - t0
            else:
                t0 = time.perf_counter()
                p.predict(img, masks=ms)
                t_p = time.perf_counter() - t0
        if rec:
            e2e.append(t_e2e)
            given_p.append(t_p)
            given_h.append(t_h)
        log(f"[bench] {backend} image {i}: predictor end to end {t_e2e:.2f} s; given masks: predictor {t_p:.3f} s, "
            f"hand-assembled {t_h:.3f} s")
    sp, sh = summarize(given_p), summarize(given_h)
    return {"end_to_end": summarize(e2e), "given_masks": sp, "hand_given_masks": sh,
            "overhead_vs_hand": (sp["median_s"] / sh["median_s"] - 1.0) if sh.get("median_s") else None}


def run_bench(cfg: BenchConfig, log=print) -> dict[str, Any]:
    """Run the benchmark described by ``cfg``; returns the JSON-able result dict."""
    from tusss.labels import paint_labels
    from tusss.pipeline import OVSegmenter

    from .models import load_models

    for b in cfg.backends:
        if b not in ("torch", "onnxruntime", "tensorrt"):
            raise InputError(f"unknown backend {b!r}; choose from torch, onnxruntime, tensorrt")
    if "tensorrt" in cfg.backends:
        from .tensorrt import require_tensorrt

        require_tensorrt()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    models = load_models(cfg.sam, cfg.clip, "random", clip_preset=cfg.clip_preset, mask_preset=cfg.mask_preset,
                         seed=cfg.seed, mask_overrides={"points_per_side": cfg.points_per_side,
                                                        "crop_n_layers": cfg.crop_layers})
    t_models = time.perf_counter() - t0
    images = synthetic_images(cfg.images + cfg.warmup, cfg.size, cfg.seed)
    result: dict[str, Any] = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "model_init_s": t_models,
        "backends": {},
    }
    tmp = tempfile.TemporaryDirectory(prefix="tusss-bench-") if cfg.engine_dir is None else None
    root = Path(cfg.engine_dir) if cfg.engine_dir else Path(tmp.name)  # type: ignore[union-attr]
    try:
        for backend in cfg.backends:
            log(f"[bench] backend {backend}: preparing")
            gen, clip, setup = _pipeline(cfg, backend, models, root, log)
            seg = OVSegmenter(gen, clip, vocabulary=cfg.vocabulary)
            t0 = time.perf_counter()
            text = seg.text_embeddings()
            setup["text_s"] = time.perf_counter() - t0
            setup["text_classes"] = int(text.shape[0])
            per: dict[str, list[float]] = {s: [] for s in STAGES}
            mem: dict[str, int] = {s: 0 for s in STAGES}
            cuda_mem: dict[str, int] = {s: 0 for s in STAGES}
            n_masks, sources = [], []
            for i, img in enumerate(images):
                gc.collect()
                rec = i >= cfg.warmup
                with PeakMemory() as pm:
                    t0 = time.perf_counter()
                    ms = gen.generate(img)
                    t_masks = time.perf_counter() - t0
                mem["masks"] = max(mem["masks"], pm.peak)
                cuda_mem["masks"] = max(cuda_mem["masks"], pm.cuda_peak)
                src = "sam"
                if len(ms) == 0:
                    ms, src = grid_masks(img.shape[:2]), "grid"
                with PeakMemory() as pm:
                    t0 = time.perf_counter()
                    emb = clip.embed_masks(img, ms.masks)
                    t_emb = time.perf_counter() - t0
                mem["embeddings"] = max(mem["embeddings"], pm.peak)
                cuda_mem["embeddings"] = max(cuda_mem["embeddings"], pm.cuda_peak)
                with PeakMemory() as pm:
                    t0 = time.perf_counter()
                    logits = clip.logits(emb, text)
                    _, labels, conf = seg.score(logits)
                    paint_labels(ms.masks, labels, ms.level, conf, fill=seg.fill)
                    t_cls = time.perf_counter() - t0
                mem["classification"] = max(mem["classification"], pm.peak)
                if rec:
                    per["masks"].append(t_masks)
                    per["embeddings"].append(t_emb)
                    per["classification"].append(t_cls)
                    n_masks.append(len(ms))
                    sources.append(src)
                log(f"[bench] {backend} image {i}: masks {t_masks:.2f} s ({len(ms)} {src}), "
                    f"embeddings {t_emb:.2f} s, classification {t_cls * 1e3:.1f} ms")
            total = [a + b + c for a, b, c in zip(per["masks"], per["embeddings"], per["classification"])]
            pred = _predictor_rows(cfg, gen, clip, seg, images, log, backend)
            result["backends"][backend] = {
                "predictor": pred,
                "graph_calls": dict(getattr(getattr(gen, "engine", None), "calls", {}) or {}),
                "setup": setup,
                "stages": {s: {**summarize(per[s]), "peak_rss_mb": mem[s] / 2**20,
                               **({"peak_cuda_mb": cuda_mem[s] / 2**20} if torch.cuda.is_available() else {})}
                           for s in STAGES},
                "total": summarize(total),
                "masks_per_image": n_masks,
                "mask_source": sources,
            }
    finally:
        if tmp is not None:
            tmp.cleanup()
    if "torch" in result["backends"]:
        base = result["backends"]["torch"]
        for r in result["backends"].values():
            r["speedup_vs_torch"] = {s: base["stages"][s]["median_s"] / r["stages"][s]["median_s"]
                                     for s in STAGES if r["stages"][s].get("median_s")}
            if r["total"].get("median_s"):
                r["speedup_vs_torch"]["total"] = base["total"]["median_s"] / r["total"]["median_s"]
    return result


def format_table(result: dict[str, Any]) -> str:
    """Console table: one row per (backend, stage)."""
    rows = [("backend", "stage", "median", "p90", "img/s", "peak RSS", "vs torch")]
    for b, r in result["backends"].items():
        for s in (*STAGES, "total"):
            st = r["total"] if s == "total" else r["stages"][s]
            if not st.get("n"):
                continue
            med = st["median_s"]
            ms = f"{med * 1e3:.1f} ms" if med < 1 else f"{med:.2f} s"
            p90 = st["p90_s"]
            p90s = f"{p90 * 1e3:.1f} ms" if p90 < 1 else f"{p90:.2f} s"
            rss = f"{st['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in st else ""
            sp = r.get("speedup_vs_torch", {}).get(s)
            rows.append((b, s, ms, p90s, f"{st['images_per_s']:.3g}", rss, f"{sp:.2f}x" if sp else ""))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    cfg = result["config"]
    head = (f"tusss-engine bench: SAM {cfg['sam']} ({cfg['points_per_side']}x{cfg['points_per_side']} points, "
            f"{cfg['crop_layers']} crop layers), {cfg['clip']} {cfg['clip_preset']} with GSW, "
            f"{cfg['vocabulary']}; {cfg['images']} images {cfg['size'][1]}x{cfg['size'][0]}, random weights")
    setup = []
    for name, r in result["backends"].items():
        s = r["setup"]
        parts = [f"text {s['text_s']:.2f} s ({s['text_classes']} classes)"]
        if "build_s" in s:
            parts.insert(0, f"build {s['build_s']:.1f} s, load {s['load_s']:.1f} s, providers {s['providers']}")
        masks = r["masks_per_image"]
        setup.append(f"  {name}: {', '.join(parts)}; masks/image {masks} from {sorted(set(r['mask_source']))}")
        pr = r.get("predictor")
        if pr and pr["end_to_end"].get("n"):
            ov = pr.get("overhead_vs_hand")
            setup.append(f"  {name}: tusss.Predictor end to end median {pr['end_to_end']['median_s']:.3f} s; on given "
                         f"masks {pr['given_masks']['median_s']:.3f} s vs hand-assembled "
                         f"{pr['hand_given_masks']['median_s']:.3f} s ("
                         + (f"{100 * ov:+.1f}%" if ov is not None else "n/a") + f"); graph runs {r.get('graph_calls')}")
    return "\n".join([head, *lines, "setup:", *setup])


def write_result(result: dict[str, Any], path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result, indent=2))
    return p
