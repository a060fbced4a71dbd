"""``tusss-engine``: build, check, inspect and benchmark exported engines.

    tusss-engine bench [--sam vit_b] [--clip ViT-B-16] [--images 3] [--size 384x512] [--points-per-side 8]
                       [--backend torch,onnxruntime[,tensorrt]] [--precision fp32] [--out bench.json]
    tusss-engine build --sam vit_h --clip ViT-B-16 --weights random|official|sam=PATH,clip=PATH
                       --precision fp32|fp16|int8|bf16 --backend onnxruntime|tensorrt|inductor
                       [--device cpu|cuda] --out DIR
    tusss-engine check DIR
    tusss-engine info DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from tusss.errors import TusssError


def _size(s: str) -> tuple[int, int]:
    """'512' -> (512, 512); 'WxH' -> (H, W)."""
    try:
        if "x" in s.lower():
            w, h = (int(v) for v in s.lower().split("x"))
        else:
            w = h = int(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--size must be N or WxH, got {s!r}") from e
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"--size must be at least 32x32, got {s!r}")
    return h, w


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tusss-engine", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("build", help="export SAM / DBA-CLIP graphs to an engine directory")
    b.add_argument("--sam", default="vit_h", help="vit_h | vit_l | vit_b | vit_tiny | none")
    b.add_argument("--clip", default="ViT-B-16", help="ViT-B-16 | tusss-tiny | none")
    b.add_argument("--weights", default="official",
                   help="random | official | sam=SRC,clip=SRC | SAM_PATH,CLIP_PATH (SRC: random, official, path)")
    b.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8", "bf16"],
                   help="int8: onnxruntime only; bf16: inductor only")
    b.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt", "inductor"],
                   help="inductor: torch.export + AOTInductor packages (.pt2)")
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="device an inductor build compiles for (--backend inductor)")
    b.add_argument("--out", required=True, help="engine directory to write")
    b.add_argument("--clip-preset", default="reference")
    b.add_argument("--mask-preset", default="tuss")
    b.add_argument("--graphs", default="", help="comma list of graphs (default all): sam_encoder,sam_decoder,"
                   "clip_windows,clip_text")
    b.add_argument("--seed", type=int, default=0, help="seed of random weights")
    b.add_argument("--max-prompts", type=int, default=1024, help="largest decoder prompt batch")
    b.add_argument("--no-optimize", action="store_true", help="skip the ONNX exporter's optimiser (faster)")

    c = sub.add_parser("check", help="compare every graph with the PyTorch model")
    c.add_argument("dir")
    c.add_argument("--weights", default=None, help="override the manifest's weight sources")
    c.add_argument("--json", default=None, help="write the report as JSON")

    i = sub.add_parser("info", help="print an engine's manifest summary")
    i.add_argument("dir")

    n = sub.add_parser("bench", help="per-stage timings of the pipeline on generated images (random weights)")
    n.add_argument("--sam", default="vit_b")
    n.add_argument("--clip", default="ViT-B-16")
    n.add_argument("--images", type=int, default=3)
    n.add_argument("--size", type=_size, default=(384, 512), help="N or WxH (default 512x384)")
    n.add_argument("--points-per-side", type=int, default=8)
    n.add_argument("--crop-layers", type=int, default=0, help="SAM crop layers (reference 1; default 0: fast)")
    n.add_argument("--mask-preset", default="tuss")
    n.add_argument("--clip-preset", default="reference")
    n.add_argument("--vocabulary", default="voc21")
    n.add_argument("--backend", default="torch", help="comma list: torch,onnxruntime,tensorrt")
    n.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    n.add_argument("--engine-dir", default=None, help="where to build engines (default: a temporary directory)")
    n.add_argument("--threads", type=int, default=0, help="torch / ONNX Runtime threads (0 = default)")
    n.add_argument("--warmup", type=int, default=0, help="extra images run first and not timed")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--out", default=None, help="write the results as JSON")
    return p


def _build(a: argparse.Namespace) -> int:
    from .build import Limits, build_engine, check_backend
    from .models import load_models

    check_backend(a.backend, a.precision, a.device)  # before loading any weights or writing any file
    sam = None if a.sam.lower() == "none" else a.sam
    clip = None if a.clip.lower() == "none" else a.clip
    m = load_models(sam, clip, a.weights, clip_preset=a.clip_preset, mask_preset=a.mask_preset, seed=a.seed)
    graphs = [g.strip() for g in a.graphs.split(",") if g.strip()] or None
    lim = Limits()
    lim.decoder_batch = (1, min(256, a.max_prompts), a.max_prompts)
    build_engine(
        a.out,
        sam=m.mask_generator.sam if m.mask_generator else None,
        clip_model=m.dbaclip.model if m.dbaclip else None,
        clip_config=m.dbaclip.cfg if m.dbaclip else None,
        sam_info=m.sam_info, clip_info=m.clip_info, precision=a.precision, backend=a.backend,
        graphs=graphs, limits=lim, optimize=not a.no_optimize, device=a.device,
    )
    return 0


def _check(a: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .check import check_engine, models_from_manifest
    from .runtime import Engine

    eng = Engine.load(a.dir)
    gen, clip = models_from_manifest(eng.manifest, a.weights)
    if gen is not None:
        eng.check_sam(gen.sam)
    if clip is not None:
        eng.check_clip(clip.model, clip.cfg)
    rep = check_engine(eng, gen.sam if gen else None, clip, log=lambda s: None)
    print(f"engine {a.dir}: backend {eng.backend}, precision {eng.manifest.precision}")
    print(rep.table())
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"ok": rep.ok, "precision": rep.precision, "rows": [asdict(r) for r in rep.rows]}, f, indent=2)
    print("check: " + ("PASSED" if rep.ok else "FAILED"))
    return 0 if rep.ok else 1


def _info(a: argparse.Namespace) -> int:
    from .manifest import read_manifest

    m = read_manifest(a.dir)
    print(f"tusss {m.tusss_version} engine, backend {m.backend}, precision {m.precision}, built {m.created}")
    if m.sam:
        print(f"  SAM {m.sam.get('model_type')} weights {m.sam.get('weights')} sha256 {m.sam['weights_sha256'][:16]}")
    if m.clip:
        print(f"  CLIP {m.clip.get('model')} weights {m.clip.get('weights')} preset {m.clip.get('preset')} "
              f"sha256 {m.clip['weights_sha256'][:16]}")
    for name, g in m.graphs.items():
        size = sum(f["bytes"] for f in g.files.values()) / 1e6
        ins = ", ".join(f"{k}{v['shape']}" for k, v in g.inputs.items())
        print(f"  {name}: {size:.1f} MB; inputs {ins}; ranges {g.ranges}")
    return 0


def _bench(a: argparse.Namespace) -> int:
    from .bench import BenchConfig, format_table, run_bench, write_result

    cfg = BenchConfig(
        sam=a.sam, clip=a.clip, images=a.images, size=a.size, points_per_side=a.points_per_side,
        crop_layers=a.crop_layers, mask_preset=a.mask_preset, clip_preset=a.clip_preset, vocabulary=a.vocabulary,
        backends=tuple(b.strip() for b in a.backend.split(",") if b.strip()), precision=a.precision,
        engine_dir=a.engine_dir, seed=a.seed, threads=a.threads, warmup=a.warmup,
    )
    res = run_bench(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_table(res))
    if a.out:
        print(f"wrote {write_result(res, a.out)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tusss-engine``: errors are one line on stderr (exit 2); ``--debug`` anywhere on the
    command line (or ``TUSSS_DEBUG=1``) shows the traceback instead."""
    import os

    from tusss.persist import one_line

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("TUSSS_DEBUG", "") not in ("", "0")
    a = _parser().parse_args([x for x in argv if x != "--debug"])
    try:
        return {"build": _build, "check": _check, "info": _info, "bench": _bench}[a.cmd](a)
    except TusssError as e:
        if debug:
            raise
        print(f"tusss-engine {a.cmd}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"tusss-engine {a.cmd}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        print(f"tusss-engine {a.cmd}: internal error: {type(e).__name__}: {one_line(e)} (re-run with --debug for "
              "the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
