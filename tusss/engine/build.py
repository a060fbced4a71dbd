"""``tusss-engine build``: export the pipeline's models to an engine directory.

Graphs (see :mod:`tusss.export.sam`, :mod:`tusss.export.clip`):

=============  ==========================================================  =====================================
graph          inputs                                                      outputs
=============  ==========================================================  =====================================
sam_encoder    images (N, 3, S, S) f32                                     image_embeddings (N, C, S/16, S/16)
sam_decoder    image_embeddings (1, C, h, w), point_coords (B, 1, 2),      low_res_masks (B, 3, 4h, 4w),
               point_labels (B, 1) f32                                     iou_predictions (B, 3)
clip_windows   pixels (N, 3, H, W), pos_embed (L, width), bias (N, L, L)   features (N, h*w, D)
clip_text      tokens (K, T) int64, eot (K,) int64                         text_features (K, D)
=============  ==========================================================  =====================================

Build order: check the backend can build (TensorRT needs its Python package and an NVIDIA GPU) *before*
anything is written; remove any old manifest; export fp32 graphs; precision pass (fp16 / int8); TensorRT
plans; write ``manifest.json`` last (a directory without a manifest is an incomplete build).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import tusss
from tusss.errors import InputError
from tusss.export.clip import GRAPH_CONFIG_FIELDS, ClipTextGraph, ClipWindowsGraph
from tusss.export.onnx_io import export_module, graph_files, graph_io, sha256_file, state_dict_hash
from tusss.export.precision import quantize_int8, to_fp16
from tusss.export.sam import SamDecoderGraph, SamEncoderGraph
from tusss.persist import TMP_SUFFIX, atomic_directory, fault_point

from .manifest import BACKENDS, GRAPHS, MANIFEST, PRECISIONS, GraphEntry, Manifest


@dataclass
class Limits:
    """Batch / size ranges baked into the graphs' optimisation profiles (min, opt, max)."""

    encoder_batch: tuple[int, int, int] = (1, 1, 8)  # full image + crops in one call (1 + 4 in the reference)
    decoder_batch: tuple[int, int, int] = (1, 256, 1024)  # points_per_batch 256 in the reference
    windows_batch: tuple[int, int, int] = (1, 40, 64)  # 40 windows for a 448 x 608 image
    global_side: tuple[int, int, int] = (224, 448, 1344)  # global pass, short side 448, aspect <= 3
    text_batch: tuple[int, int, int] = (1, 256, 1024)


@dataclass
class BuildResult:
    manifest: Manifest
    seconds: dict[str, float] = field(default_factory=dict)


def _mk_range(r: Sequence[int]) -> list[int]:
    lo, opt, hi = (int(x) for x in r)
    if not (1 <= lo <= opt <= hi):
        raise InputError(f"bad range {r}: need 1 <= min <= opt <= max")
    return [lo, opt, hi]


def graph_specs(
    sam: nn.Module | None, clip_model: nn.Module | None, clip_config: Any, limits: Limits
) -> dict[str, dict[str, Any]]:
    """Module, example inputs, names and dynamic axes of every graph that the given models allow."""
    specs: dict[str, dict[str, Any]] = {}
    if sam is not None:
        S = int(sam.image_encoder.img_size)
        enc = SamEncoderGraph(sam).eval()
        eb = _mk_range(limits.encoder_batch)
        specs["sam_encoder"] = dict(
            module=enc,
            args=(torch.randn(2, 3, S, S),),
            inputs=["images"],
            outputs=["image_embeddings"],
            dynamic={"images": {0: ("N", eb[0], eb[2])}},
            profiles=[{"N": eb}],
        )
        dec = SamDecoderGraph(sam).eval()
        C, h, w = dec.image_pe.shape[1:]
        db = _mk_range(limits.decoder_batch)
        specs["sam_decoder"] = dict(
            module=dec,
            args=(torch.randn(1, C, h, w), torch.rand(3, 1, 2) * S, torch.ones(3, 1)),
            inputs=["image_embeddings", "point_coords", "point_labels"],
            outputs=["low_res_masks", "iou_predictions"],
            dynamic={"point_coords": {0: ("B", db[0], db[2])}, "point_labels": {0: ("B", db[0], db[2])}},
            profiles=[{"B": db}],
        )
    if clip_model is not None:
        v = clip_model.visual
        patch = int(v.patch_size[0])
        base = int(v.image_size[0]) if isinstance(v.image_size, (tuple, list)) else int(v.image_size)
        wb, gs = _mk_range(limits.windows_batch), _mk_range(limits.global_side)
        g = ClipWindowsGraph(clip_model, clip_config).eval()
        n0 = (base // patch) ** 2 + 1
        Lw = [n0, n0, n0]
        # global pass: short side gs[1] (448), typical 4:3 long side, at most gs[2] (L bounds follow)
        opt_w = -(-gs[1] * 4 // 3 // patch) * patch
        Lg = [n0, 1 + (gs[1] // patch) * (opt_w // patch), 1 + (gs[1] // patch) * (gs[2] // patch)]
        specs["clip_windows"] = dict(
            module=g,
            args=(
                torch.randn(2, 3, base, base),
                v.positional_embedding.detach().clone(),
                torch.zeros(2, n0, n0),
            ),
            inputs=["pixels", "pos_embed", "bias"],
            outputs=["features"],
            dynamic={
                "pixels": {0: ("N", 1, wb[2]), 2: ("H", patch, 4096), 3: ("W", patch, 4096)},
                "pos_embed": {0: ("L", 2, 65537)},
                "bias": {0: ("N", 1, wb[2]), 1: ("L", 2, 65537), 2: ("L", 2, 65537)},
            },
            profiles=[
                {"N": wb, "H": [base] * 3, "W": [base] * 3, "L": Lw},
                {"N": [1, 1, 2], "H": [base, gs[1], gs[2]], "W": [base, opt_w, gs[2]], "L": Lg},
            ],
        )
        txt = ClipTextGraph(clip_model).eval()
        T = int(clip_model.positional_embedding.shape[0])
        tb = _mk_range(limits.text_batch)
        tok = torch.randint(1, 1000, (2, T))
        tok[:, 5] = 49407
        specs["clip_text"] = dict(
            module=txt,
            args=(tok, torch.full((2,), 5, dtype=torch.int64)),
            inputs=["tokens", "eot"],
            outputs=["text_features"],
            dynamic={"tokens": {0: ("K", tb[0], tb[2])}, "eot": {0: ("K", tb[0], tb[2])}},
            profiles=[{"K": tb}],
        )
    return specs


def _union(profiles: list[dict[str, list[int]]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for p in profiles:
        for k, (lo, opt, hi) in p.items():
            if k in out:
                out[k] = [min(out[k][0], lo), out[k][1], max(out[k][2], hi)]
            else:
                out[k] = [lo, opt, hi]
    return out


def check_backend(backend: str, precision: str, device: str = "cpu") -> None:
    """Refuse, before anything is written, a build that cannot complete on this machine."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if backend == "inductor":
        from .inductor import PRECISIONS as INDUCTOR_PRECISIONS
        from .inductor import require_device

        if precision not in INDUCTOR_PRECISIONS:
            raise InputError(f"precision {precision!r} is ONNX Runtime quantisation; --backend inductor compiles "
                             f"{INDUCTOR_PRECISIONS}")
        require_device(device)
        return
    if device != "cpu":
        raise InputError(f"--device is an option of --backend inductor (the {backend} device is chosen at load time)")
    if precision == "bf16":
        raise InputError(f"precision bf16 is an inductor precision; {backend} engines are fp32, fp16 or int8")
    if backend == "tensorrt":
        if precision == "int8":
            raise InputError(
                "precision int8 is ONNX Runtime dynamic quantisation (CPU); TensorRT engines are built from the "
                "fp32 or fp16 graph: use --precision fp16 --backend tensorrt"
            )
        from .tensorrt import require_tensorrt

        require_tensorrt()


def _config_dict(cfg: Any) -> dict[str, Any]:
    import dataclasses

    if cfg is None:
        return {}
    if dataclasses.is_dataclass(cfg):
        d = dataclasses.asdict(cfg)
    else:
        d = dict(vars(cfg))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    v = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
         "python": platform.python_version()}
    try:
        import tensorrt  # noqa: F401

        v["tensorrt"] = tensorrt.__version__
    except Exception:
        pass
    return v


def build_engine(
    out_dir: str | os.PathLike,
    *,
    sam: nn.Module | None = None,
    clip_model: nn.Module | None = None,
    clip_config: Any = None,
    sam_info: dict[str, Any] | None = None,
    clip_info: dict[str, Any] | None = None,
    precision: str = "fp32",
    backend: str = "onnxruntime",
    graphs: Sequence[str] | None = None,
    limits: Limits | None = None,
    log: Callable[[str], None] | None = print,
    optimize: bool = True,
    device: str = "cpu",
) -> BuildResult:
    """Export the given models to ``out_dir`` and write its manifest.

    Args:
        sam: segment_anything ``Sam`` (graphs sam_encoder, sam_decoder) or None.
        clip_model: open_clip CLIP model (graphs clip_windows, clip_text) or None.
        clip_config: the :class:`tusss.clip.config.DBAClipConfig` of the runtime (last-block options baked
            into clip_windows; recorded in full in the manifest).
        sam_info / clip_info: extra manifest fields (model name, weights source, presets).
        precision: fp32 | fp16 | int8 (| bf16 for inductor).  backend: onnxruntime | tensorrt | inductor.
        graphs: subset of the graphs to build (default: all that the given models allow).
        limits: batch / size ranges (TensorRT profiles and runtime chunking).
        optimize: run the ONNX exporter's optimiser (slower export, smaller graphs).
        device: cpu | cuda, the device an inductor build compiles for (:mod:`tusss.engine.inductor`).
    """
    say = log or (lambda s: None)
    check_backend(backend, precision, device)
    limits = limits or Limits()
    if clip_config is not None and getattr(clip_config, "bias", "joint") == "per_mask":
        raise InputError(
            "DBA-CLIP preset with bias='per_mask' (one last-block pass per mask) is not supported by the engine; "
            "use a preset with a joint bias (e.g. 'reference')"
        )
    specs = graph_specs(sam, clip_model, clip_config, limits)
    wanted = list(graphs) if graphs else list(specs)
    for g in wanted:
        if g not in GRAPHS:
            raise InputError(f"unknown graph {g!r}; known graphs: {GRAPHS}")
        if g not in specs:
            raise InputError(f"graph {g!r} needs the {'SAM' if g.startswith('sam') else 'CLIP'} model, none given")
    final_dir = Path(out_dir)
    with engine_directory(final_dir) as out:
        man, timings = _build_into(out, specs, wanted, sam, clip_model, clip_config, sam_info, clip_info,
                                   precision, backend, say, optimize, device)
    say(f"[build] wrote {final_dir / MANIFEST}")
    return BuildResult(man, timings)


_ENGINE_SUFFIXES = (".onnx", ".data", ".plan", ".pt2", ".cache", TMP_SUFFIX)  # .data: ONNX external data


@contextlib.contextmanager
def engine_directory(out: Path) -> Iterator[Path]:
    """A (re)build of the engine at ``out``: the files are written into a hidden sibling folder that replaces
    ``out`` only once the manifest is written, so a build that fails, runs out of disk or is killed leaves
    the previous engine (or nothing) in place, never a mixture. An existing ``out`` must be an engine folder
    (only engine files in it): building into a folder that holds anything else is refused rather than
    replacing it. A previous TensorRT timing cache is carried into the new build."""
    if out.exists():
        if not out.is_dir():
            raise InputError(f"engine output {out} exists and is not a directory")
        foreign = sorted(q.name for q in out.iterdir()
                         if not (q.is_file() and (q.name == MANIFEST or q.name.endswith(_ENGINE_SUFFIXES))))
        if foreign:
            raise InputError(f"engine output {out} holds files that are not an engine's ({', '.join(foreign[:5])}"
                             f"{', ...' if len(foreign) > 5 else ''}); build into an empty folder or an engine folder")
    with atomic_directory(out) as tmp:
        if (out / "timing.cache").is_file():
            shutil.copyfile(out / "timing.cache", tmp / "timing.cache")
        yield tmp


def _build_into(out: Path, specs: dict, wanted: list[str], sam, clip_model, clip_config, sam_info,
                clip_info, precision: str, backend: str, say: Callable[[str], None], optimize: bool,
                device: str) -> tuple[Manifest, dict[str, float]]:
    """The body of :func:`build_engine`, writing into the temporary folder ``out``."""
    fault_point("engine-build")
    timings: dict[str, float] = {}
    entries: dict[str, GraphEntry] = {}
    versions = _versions()
    if backend == "inductor":  # torch.export + AOTInductor packages instead of ONNX graphs
        from .inductor import build_graphs, device_versions

        entries, timings = build_graphs(out, specs, wanted, device=device, precision=precision, say=say)
        versions.update(device_versions(device))
        wanted = []
    for name in wanted:
        sp = specs[name]
        t0 = time.perf_counter()
        final = out / f"{name}.onnx"
        src = final if precision == "fp32" else out / f"{name}.fp32.onnx"
        say(f"[build] exporting {name} ...")
        export_module(sp["module"], sp["args"], src, input_names=sp["inputs"], output_names=sp["outputs"],
                      dynamic=sp["dynamic"], optimize=optimize)
        entry = GraphEntry(onnx=final.name, inputs={}, outputs={}, ranges=_union(sp["profiles"]),
                           profiles=sp["profiles"])
        finish_graph(out, name, src, entry, precision, backend, say, inputs=sp["inputs"], outputs=sp["outputs"])
        if src != final:
            for p in graph_files(src):
                p.unlink()
        entries[name] = entry
        timings[name] = time.perf_counter() - t0
        say(f"[build] {name}: {timings[name]:.1f} s, {sum(f['bytes'] for f in entry.files.values()) / 1e6:.1f} MB")
        fault_point("engine-build")  # test hook (TUSSS_FAULT_KILL_AFTER): killed after this many graphs

    sam_meta: dict[str, Any] = {}
    if sam is not None:
        sam_meta = {"weights_sha256": state_dict_hash(sam), "img_size": int(sam.image_encoder.img_size),
                    "mask_threshold": float(sam.mask_threshold)}
        sam_meta.update(sam_info or {})
    clip_meta: dict[str, Any] = {}
    if clip_model is not None:
        cfg = _config_dict(clip_config)
        clip_meta = {"weights_sha256": state_dict_hash(clip_model), "config": cfg,
                     "graph_config": {k: cfg.get(k) for k in GRAPH_CONFIG_FIELDS}}
        clip_meta.update(clip_info or {})
    man = Manifest(
        tusss_version=tusss.__version__,
        backend=backend,
        precision=precision,
        sam=sam_meta,
        clip=clip_meta,
        graphs=entries,
        versions=versions,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    man.write(out)
    return man, timings


def finish_graph(
    out: Path,
    name: str,
    src: Path,
    entry: GraphEntry,
    precision: str,
    backend: str,
    say: Callable[[str], None],
    *,
    inputs: Sequence[str],
    outputs: Sequence[str],
) -> GraphEntry:
    """Precision pass ``src`` (fp32 ONNX) -> ``out/<name>.onnx``, TensorRT plan, I/O specs and file hashes."""
    final = out / f"{name}.onnx"
    if precision == "fp16":
        say(f"[build] {name}: fp16 pass (LayerNorm, Softmax, reductions kept fp32)")
        to_fp16(src, final)
    elif precision == "int8":
        say(f"[build] {name}: int8 dynamic quantisation")
        quantize_int8(src, final)
    elif src != final:
        import shutil

        for p in graph_files(src):
            shutil.copyfile(p, out / (final.name + p.name[len(src.name):]))
    ins, outs = graph_io(final)
    entry.onnx = final.name
    entry.inputs = {n: {"dtype": "int64" if n in ("tokens", "eot") else "float32", "shape": ins[n]} for n in inputs}
    entry.outputs = {n: {"dtype": "float32", "shape": outs[n]} for n in outputs}
    entry.plan = None
    if backend == "tensorrt":
        from .tensorrt import build_plan

        plan = out / f"{name}.plan"
        say(f"[build] {name}: TensorRT plan")
        build_plan(final, plan, entry, timing_cache=out / "timing.cache")
        entry.plan = plan.name
    files = graph_files(final) + ([out / entry.plan] if entry.plan else [])
    entry.files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files}
    return entry


def derive_engine(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    precision: str,
    backend: str = "onnxruntime",
    log: Callable[[str], None] | None = print,
) -> Manifest:
    """A new engine from the fp32 ONNX graphs of ``src_dir`` (no re-export): precision pass + plans.

    Exports are the slow part of a build; this builds the fp16 / int8 / TensorRT variants from one export.
    """
    from .manifest import read_manifest

    say = log or (lambda s: None)
    check_backend(backend, precision)
    src = read_manifest(src_dir)
    if src.precision != "fp32":
        raise InputError(f"derive_engine needs an fp32 source engine, {src_dir} is {src.precision}")
    src.verify_files(src_dir)
    if Path(out_dir).resolve() == Path(src_dir).resolve():
        raise InputError("derive_engine: out_dir must differ from src_dir")
    with engine_directory(Path(out_dir)) as out:
        entries = {}
        for name, g in src.graphs.items():
            entry = GraphEntry(onnx=g.onnx, inputs={}, outputs={}, ranges=g.ranges, profiles=g.profiles)
            entries[name] = finish_graph(out, name, Path(src_dir) / g.onnx, entry, precision, backend, say,
                                         inputs=list(g.inputs), outputs=list(g.outputs))
        man = Manifest(tusss_version=tusss.__version__, backend=backend, precision=precision, sam=src.sam,
                       clip=src.clip, graphs=entries, versions=_versions(),
                       created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        man.write(out)
    return man
