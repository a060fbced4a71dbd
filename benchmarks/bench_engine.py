"""Engine benchmark: ONNX Runtime vs PyTorch eager on the graphs of the pipeline, in one run, same inputs.

    nice python benchmarks/bench_engine.py [--repeats 3] [--threads 2] [--out benchmarks/results/engine.json]

Rows (random weights, CPU unless a GPU is present):
* SAM vit_b image encoder at 1024 x 1024 (batch 1): ORT fp32 vs ``sam.image_encoder``;
* SAM vit_b prompt decoder at B = 256 prompts: ORT fp32 vs ``prompt_encoder`` + ``mask_decoder``;
* DBA-CLIP ViT-B-16 reference: 40 windows of 224 (a 448 x 608 image at stride 56) and the global pass
  (448 x 608): ORT fp32 vs tusss' ``TowerRunner.features``;
* DBA-CLIP windows ORT int8 (dynamic quantisation) vs ORT fp32: speed and cosine to the eager output.

Ratios are against the eager baseline measured in the same run (median of ``--repeats`` after one
warm-up call). "Where time goes": one profiled ONNX Runtime run per graph, time per op type.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    out = fn()  # warm-up (allocations, ORT arena, lazy init)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts, out


def op_profile(path: Path, feeds: dict, threads: int) -> dict[str, float]:
    """Share of kernel time per ONNX op type over one profiled ONNX Runtime run."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as td:
        so.profile_file_prefix = os.path.join(td, "prof")
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        s.run(None, feeds)
        prof = s.end_profiling()
        events = json.loads(Path(prof).read_text())
    per: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per[e.get("args", {}).get("op_name", "?")] += float(e.get("dur", 0))
    total = sum(per.values()) or 1.0
    return {k: round(v / total, 4) for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:8]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--rows", default="encoder,decoder,clip", help="subset of encoder,decoder,clip; other rows "
                    "already in --out are kept")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "engine.json"))
    a = ap.parse_args(argv)
    rows = {r.strip() for r in a.rows.split(",")}

    from tusss.clip.attention import build_attention_bias
    from tusss.clip.model import DBAClip
    from tusss.engine.check import compare
    from tusss.engine.graphs import OrtGraph
    from tusss.export.clip import ClipWindowsGraph
    from tusss.export.onnx_io import export_module, graph_io
    from tusss.export.precision import quantize_int8
    from tusss.export.sam import SamDecoderGraph, SamEncoderGraph
    from tusss.masks.sam_registry import build_sam

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    res: dict = {"machine": {"cpu_count": os.cpu_count(), "threads": a.threads, "torch": torch.__version__,
                             "python": platform.python_version()}, "repeats": a.repeats, "rows": []}
    import onnxruntime

    res["machine"]["onnxruntime"] = onnxruntime.__version__

    def ort_graph(path: Path) -> OrtGraph:
        ins, outs = graph_io(path)
        spec = {n: {"dtype": "float32", "shape": s} for n, s in ins.items()}
        return OrtGraph(path, spec, list(outs), ["CPUExecutionProvider"], a.threads)

    def row(name: str, base_s: float, eng_s: float, ref, got, **extra) -> None:
        cmp = compare(ref, got)
        r = {"row": name, "eager_s": base_s, "engine_s": eng_s, "speedup": base_s / eng_s, **cmp, **extra}
        res["rows"].append(r)
        log(f"[bench_engine] {name}: eager {base_s:.3f} s, engine {eng_s:.3f} s, {base_s / eng_s:.2f}x, "
            f"rel {cmp['rel']:.1e}, cos {cmp['cosine']:.6f}")

    with tempfile.TemporaryDirectory(prefix="bench-engine-") as td, torch.no_grad():
        td = Path(td)
        res["export_s"] = {}
        sam, _ = build_sam("vit_b", None)
        x = torch.randn(1, 3, 1024, 1024)
        emb = None
        # ---------------------------------------------------------------- SAM vit_b encoder
        if "encoder" in rows:
            t0 = time.perf_counter()
            enc_path = export_module(SamEncoderGraph(sam), (torch.randn(2, 3, 1024, 1024),), td / "enc.onnx",
                                     input_names=["images"], output_names=["image_embeddings"],
                                     dynamic={"images": {0: ("N", 1, 8)}})
            res["export_s"]["sam_encoder_vit_b"] = time.perf_counter() - t0
            base, _, ref = timed(lambda: sam.image_encoder(x), a.repeats)
            g = ort_graph(enc_path)
            eng, _, got = timed(lambda: g.run({"images": x})[0], a.repeats)
            row("sam_vit_b_encoder_1024", base, eng, ref, got,
                profile=op_profile(enc_path, {"images": x.numpy()}, a.threads))
            emb = ref
        # ---------------------------------------------------------------- SAM vit_b decoder, B prompts
        if "decoder" in rows:
            emb = sam.image_encoder(x) if emb is None else emb
            B = a.prompts
            pts, lab = torch.rand(B, 1, 2) * 1024, torch.ones(B, 1)
            pe = sam.prompt_encoder.get_dense_pe()

            def eager_dec():
                sp, de = sam.prompt_encoder(points=(pts, lab), boxes=None, masks=None)
                return sam.mask_decoder(emb, pe, sp, de, multimask_output=True)[0]

            base, _, ref = timed(eager_dec, a.repeats)
            feeds = {"image_embeddings": emb, "point_coords": pts, "point_labels": lab}
            for share in (True, False):
                name = "dec.onnx" if share else "dec_noshare.onnx"
                t0 = time.perf_counter()
                dec_path = export_module(
                    SamDecoderGraph(sam, share_first_layer=share), (emb, torch.rand(3, 1, 2) * 1024, torch.ones(3, 1)),
                    td / name, input_names=["image_embeddings", "point_coords", "point_labels"],
                    output_names=["low_res_masks", "iou_predictions"],
                    dynamic={"point_coords": {0: ("B", 1, 1024)}, "point_labels": {0: ("B", 1, 1024)}})
                res["export_s"][f"sam_decoder_vit_b{'' if share else '_noshare'}"] = time.perf_counter() - t0
                g = ort_graph(dec_path)
                eng, _, got = timed(lambda: g.run(feeds)[0], a.repeats)  # noqa: B023
                row(f"sam_vit_b_decoder_B{B}{'' if share else '_no_layer0_sharing'}", base, eng, ref, got,
                    profile=op_profile(dec_path, {k: v.numpy() for k, v in feeds.items()}, a.threads))
        # ---------------------------------------------------------------- DBA-CLIP windows + global
        if "clip" in rows:
            clip = DBAClip.from_pretrained("ViT-B-16", weights=None, preset="reference")
            runner, cfg = clip.runner, clip.cfg
            t0 = time.perf_counter()
            win_path = export_module(
                ClipWindowsGraph(clip.model, cfg),
                (torch.randn(2, 3, 224, 224), clip.model.visual.positional_embedding.detach(),
                 torch.zeros(2, 197, 197)),
                td / "win.onnx", input_names=["pixels", "pos_embed", "bias"], output_names=["features"],
                dynamic={"pixels": {0: ("N", 1, 64), 2: ("H", 16, 4096), 3: ("W", 16, 4096)},
                         "pos_embed": {0: ("L", 2, 65537)}, "bias": {0: ("N", 1, 64), 1: ("L", 2, 65537),
                                                                    2: ("L", 2, 65537)}})
            res["export_s"]["clip_windows_vit_b16"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            q_path = quantize_int8(win_path, td / "win_int8.onnx")
            res["export_s"]["clip_windows_int8_quantize"] = time.perf_counter() - t0
            gw, gq = ort_graph(win_path), ort_graph(q_path)
            gen = torch.Generator().manual_seed(0)
            for n, H, W in [(40, 224, 224), (1, 448, 608)]:
                h, w = H // 16, W // 16
                px = torch.randn(n, 3, H, W, generator=gen)
                tm = torch.rand(n, 24, h * w, generator=gen) > 0.9
                bias = build_attention_bias(tm, bias_value=cfg.bias_value, cls_visible=cfg.cls_visible)
                pos = runner.pos_embed((h, w))
                feeds = {"pixels": px, "pos_embed": pos, "bias": bias}
                base, _, ref = timed(lambda: runner.features(px, tm), a.repeats)  # noqa: B023
                ref = ref.reshape(n * h * w, -1)
                eng, _, got = timed(lambda: gw.run(feeds)[0], a.repeats)  # noqa: B023
                row(f"dbaclip_vit_b16_{n}x{H}x{W}", base, eng, ref, got.reshape(n * h * w, -1),
                    profile=op_profile(win_path, {k: v.numpy() for k, v in feeds.items()}, a.threads))
                q, _, gotq = timed(lambda: gq.run(feeds)[0], a.repeats)  # noqa: B023
                cmp = compare(ref, gotq.reshape(n * h * w, -1))
                r = {"row": f"dbaclip_vit_b16_{n}x{H}x{W}_int8_vs_fp32", "fp32_ort_s": eng, "int8_ort_s": q,
                     "speedup": eng / q, "eager_s": base, **cmp}
                res["rows"].append(r)
                log(f"[bench_engine] int8 {n}x{H}x{W}: fp32 {eng:.3f} s, int8 {q:.3f} s, {eng / q:.2f}x, "
                    f"cos {cmp['cosine']:.5f} (min row {cmp['min_row_cosine']:.5f})")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_file() and rows != {"encoder", "decoder", "clip"}:  # partial rerun: keep the other rows
        old = json.loads(out.read_text())
        mine = {r["row"] for r in res["rows"]}
        res["rows"] = [r for r in old.get("rows", []) if r["row"] not in mine] + res["rows"]
        res["export_s"] = {**old.get("export_s", {}), **res["export_s"]}
    out.write_text(json.dumps(res, indent=2))
    print(f"{'row':<40} {'eager':>9} {'engine':>9} {'speedup':>8} {'rel err':>9} {'cosine':>9}")
    for r in res["rows"]:
        e = r.get("engine_s", r.get("int8_ort_s"))
        b = r.get("eager_s") if "engine_s" in r else r.get("fp32_ort_s")
        print(f"{r['row']:<40} {b:9.3f} {e:9.3f} {r['speedup']:7.2f}x {r['rel']:9.1e} {r['cosine']:9.6f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
