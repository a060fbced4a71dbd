"""Engine benchmark: ONNX Runtime vs PyTorch eager on the graphs of the pipeline, in one run, same inputs.

    nice python benchmarks/bench_engine.py [--repeats 3] [--threads 2] [--out benchmarks/results/engine.json]

Rows (random weights, CPU unless a GPU is present):
* SAM vit_b image encoder at 1024 x 1024 (batch 1): ORT fp32 vs ``sam.image_encoder``;
* SAM vit_b prompt decoder at B = 256 prompts: ORT fp32 vs ``prompt_encoder`` + ``mask_decoder``;
* DBA-CLIP ViT-B-16 reference: 40 windows of 224 (a 448 x 608 image at stride 56) and the global pass
  (448 x 608): ORT fp32 vs tusss' ``TowerRunner.features``;
* DBA-CLIP windows ORT int8 (dynamic quantisation) vs ORT fp32: speed and cosine to the eager output.
* ``--rows inductor``: AOTInductor packages (``tusss-engine build --backend inductor``) vs ONNX Runtime vs eager for
  the SAM encoder (batch 1), the decoder at ``--prompts`` prompts and the DBA-CLIP windows of one 448 x 608 image
  (40 windows of 224), with compile time and package size (:func:`inductor_rows`; on the GPU machine
  ``benchmarks/gpu_check.py`` calls the same function with fp16 / bf16 and ``torch.compile``).

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


def _stage_inputs(stage: str, sam, clip, prompts: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Benchmark inputs of one engine graph (CPU float32 / int64)."""
    if stage == "sam_encoder":
        S = int(sam.image_encoder.img_size)
        return {"images": torch.randn(1, 3, S, S, generator=gen)}
    if stage == "sam_decoder":
        S = int(sam.image_encoder.img_size)
        C, (h, w) = sam.prompt_encoder.embed_dim, sam.prompt_encoder.image_embedding_size
        return {"image_embeddings": torch.randn(1, C, h, w, generator=gen),
                "point_coords": torch.rand(prompts, 1, 2, generator=gen) * S, "point_labels": torch.ones(prompts, 1)}
    if stage == "clip_windows":  # the 40 windows of 224 of one 448 x 608 image, 24 masks
        from tusss.clip.attention import build_attention_bias

        cfg, n, g = clip.cfg, 40, clip.runner.base_grid
        tm = torch.rand(n, 24, g[0] * g[1], generator=gen) > 0.9
        return {"pixels": torch.randn(n, 3, 224, 224, generator=gen), "pos_embed": clip.runner.pos_embed(g),
                "bias": build_attention_bias(tm, bias_value=cfg.bias_value, cls_visible=cfg.cls_visible)}
    raise ValueError(stage)


def inductor_rows(*, device: str = "cpu", precisions: tuple[str, ...] = ("fp32",),
                  stages: tuple[str, ...] = ("sam_encoder", "sam_decoder", "clip_windows"), sam_type: str = "vit_b",
                  clip_name: str = "ViT-B-16", prompts: int = 256, repeats: int = 3, with_ort: bool | None = None,
                  with_compile: bool | None = None, workdir: str | os.PathLike | None = None,
                  log=lambda s: print(s, file=sys.stderr, flush=True)) -> list[dict]:
    """AOTInductor vs eager (vs ONNX Runtime on CPU, vs ``torch.compile`` on GPU) per engine graph, one run.

    GPU rows for the GPU check: ``benchmarks/gpu_check.py`` calls
    ``inductor_rows(device="cuda", precisions=("fp16", "bf16"))`` (random weights, ~10 min of compile on an H200 for
    vit_b + ViT-B-16; ``stages=`` / ``sam_type=`` make it smaller) and gets one dict per (stage, precision):

    ``{"row", "stage", "device", "precision", "eager_s", "inductor_s", "speedup_vs_eager", "compile_s",
    "package_mb", "rel", "cosine", "min_row_cosine"}`` (errors against the fp32 eager output), plus
    ``"ort_s"``/``"speedup_vs_ort"`` (CPU) or ``"compile_s_torch_compile"``/``"torch_compile_s"``/
    ``"speedup_vs_torch_compile"`` (GPU). Eager at fp16/bf16 = the graph module cast to that dtype.
    """
    import copy
    import gc

    from tusss.clip.model import DBAClip
    from tusss.engine.build import Limits, graph_specs
    from tusss.engine.check import compare
    from tusss.engine.graphs import OrtGraph
    from tusss.engine.inductor import DTYPE_NAMES, DTYPES, InductorGraph, compile_graph
    from tusss.export.onnx_io import export_module, graph_io
    from tusss.masks.sam_registry import build_sam

    with_ort = (device == "cpu") if with_ort is None else with_ort
    with_compile = (device == "cuda") if with_compile is None else with_compile
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    sam = build_sam(sam_type, None)[0].eval() if any(s.startswith("sam") for s in stages) else None
    clip = DBAClip.from_pretrained(clip_name, weights=None) if "clip_windows" in stages else None
    specs = graph_specs(sam, clip.model if clip else None, clip.cfg if clip else None,
                        Limits(decoder_batch=(1, prompts, max(prompts, 1024))))
    gen = torch.Generator().manual_seed(0)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-inductor-", dir=workdir) as td, torch.no_grad():
        td = Path(td)
        for stage in stages:
            sp = specs[stage]
            feeds = _stage_inputs(stage, sam, clip, prompts, gen)
            args = [feeds[n] for n in sp["inputs"]]
            ref = sp["module"](*args)
            ref = ref[0] if isinstance(ref, (tuple, list)) else ref
            ort_s = None
            if with_ort:
                path = export_module(sp["module"], sp["args"], td / f"{stage}.onnx", input_names=sp["inputs"],
                                     output_names=sp["outputs"], dynamic=sp["dynamic"])
                ins, outs = graph_io(path)
                g = OrtGraph(path, {n: {"dtype": "float32", "shape": ins[n]} for n in sp["inputs"]}, list(outs),
                             ["CPUExecutionProvider"], torch.get_num_threads())
                ort_s, _, _ = timed(lambda: g.run(feeds)[0], repeats)  # noqa: B023
                del g  # free the session before compiling (vit_b decoder at 256 prompts: tens of GB in all)
            for prec in precisions:
                dt = DTYPES[prec]
                mod = sp["module"] if (prec == "fp32" and device == "cpu") else \
                    copy.deepcopy(sp["module"]).to(device=device, dtype=dt).eval()
                xs = [a.to(device=device, dtype=dt) if a.is_floating_point() else a.to(device) for a in args]

                def eager(_m=mod, _xs=xs):
                    o = _m(*_xs)
                    sync()
                    return o

                eager_s, _, _ = timed(eager, repeats)
                pkg = td / f"{stage}_{prec}.pt2"
                _, _, compile_s = compile_graph(sp["module"], sp["args"], pkg, input_names=sp["inputs"],
                                                output_names=sp["outputs"], dynamic=sp["dynamic"], device=device,
                                                precision=prec)
                specs_in = {n: {"dtype": DTYPE_NAMES[x.dtype], "shape": []} for n, x in zip(sp["inputs"], xs)}
                ig = InductorGraph(pkg, specs_in, sp["outputs"], device)

                def run_ind(_ig=ig, _feeds=feeds):
                    o = _ig.run(_feeds)
                    sync()
                    return o[0]

                ind_s, _, got = timed(run_ind, repeats)
                r = {"row": f"{stage}_{sam_type if stage.startswith('sam') else clip_name}_{prec}_{device}",
                     "stage": stage, "device": device, "precision": prec, "eager_s": eager_s, "inductor_s": ind_s,
                     "speedup_vs_eager": eager_s / ind_s, "compile_s": compile_s,
                     "package_mb": pkg.stat().st_size / 1e6, **compare(ref, got.float().cpu())}
                if ort_s is not None:
                    r.update({"ort_s": ort_s, "speedup_vs_ort": ort_s / ind_s})
                if with_compile:
                    t0 = time.perf_counter()
                    cm = torch.compile(mod)
                    cm(*xs)
                    sync()
                    r["compile_s_torch_compile"] = time.perf_counter() - t0

                    def run_tc(_cm=cm, _xs=xs):
                        o = _cm(*_xs)
                        sync()
                        return o

                    tc_s, _, _ = timed(run_tc, repeats)
                    r.update({"torch_compile_s": tc_s, "speedup_vs_torch_compile": tc_s / ind_s})
                rows.append(r)
                del ig, mod, got
                gc.collect()
                log(f"[bench_engine] {r['row']}: eager {eager_s:.3f} s, inductor {ind_s:.3f} s "
                    f"({eager_s / ind_s:.2f}x)" + (f", ORT {ort_s:.3f} s ({ort_s / ind_s:.2f}x)" if ort_s else "")
                    + f", compile {compile_s:.0f} s, {r['package_mb']:.1f} MB, rel {r['rel']:.1e}")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--rows", default="encoder,decoder,clip", help="subset of encoder,decoder,clip,inductor; other "
                    "rows already in --out are kept")
    ap.add_argument("--sam", default="vit_b", help="SAM model of the inductor rows")
    ap.add_argument("--clip", default="ViT-B-16", help="CLIP model of the inductor rows")
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

    if "inductor" in rows:
        res["rows"] += inductor_rows(device="cpu", precisions=("fp32",), sam_type=a.sam, clip_name=a.clip,
                                     prompts=a.prompts, repeats=a.repeats, log=log)
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as td, torch.no_grad():
        td = Path(td)
        res["export_s"] = {}
        sam, _ = build_sam("vit_b", None) if rows & {"encoder", "decoder", "clip"} else (None, None)
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
        if "inductor_s" in r:
            print(f"{r['row']:<40} {r['eager_s']:9.3f} {r['inductor_s']:9.3f} {r['speedup_vs_eager']:7.2f}x "
                  f"{r['rel']:9.1e} {r['cosine']:9.6f}  (ORT {r.get('ort_s', float('nan')):.3f} s, compile "
                  f"{r['compile_s']:.0f} s, {r['package_mb']:.1f} MB)")
            continue
        e = r.get("engine_s", r.get("int8_ort_s"))
        b = r.get("eager_s") if "engine_s" in r else r.get("fp32_ort_s")
        print(f"{r['row']:<40} {b:9.3f} {e:9.3f} {r['speedup']:7.2f}x {r['rel']:9.1e} {r['cosine']:9.6f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
