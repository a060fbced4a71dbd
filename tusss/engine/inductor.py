"""AOTInductor backend: the engine's graphs through ``torch.export`` and ``torch._inductor.aoti_compile_and_package``.

The same graphs as the ONNX build (:func:`tusss.engine.build.graph_specs`: SAM encoder with a batch axis, the
prompt-batched decoder, DBA-CLIP windows with the mask-bias input, the text encoder) are exported with dynamic
batch (and window size) dimensions by :func:`tusss.export.onnx_io.export_program`, which decomposes the
``tusss::masked_dual_attention`` op into its PyTorch twin, and compiled into one ``<graph>.pt2`` package each: C++
from the system compiler on ``--device cpu``, Triton kernels generated and tuned for the GPU on ``--device cuda``.
:class:`InductorGraph` loads a package with ``torch._inductor.aoti_load_package`` (no model code needed) behind
the ``run(feeds) -> outputs`` interface of the ONNX Runtime / TensorRT graph runners (tusss/engine/graphs.py).

Precision: fp32, or the graph module cast to fp16 / bf16 (weights and activations; inputs are cast by the runner
and outputs returned as float32, so callers see the same I/O as the other backends). A package is tied to the
torch build and the device it was compiled for: the manifest records both (``versions["torch"]``,
``versions["inductor_device"]``, and for CUDA the GPU name and compute capability), and :func:`load_graphs`
refuses another torch version, a CUDA package without a GPU, or a GPU of another compute capability.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tusss.errors import CorruptFileError, InputError

from .errors import BackendUnavailableError, EngineMismatchError

__all__ = ["DEVICES", "PRECISIONS", "DTYPES", "DTYPE_NAMES", "require_device", "device_versions", "compile_graph",
           "InductorGraph", "load_graphs"]

DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
                torch.int64: "int64", torch.int32: "int32"}
_BY_NAME = {v: k for k, v in DTYPE_NAMES.items()}


def require_device(device: str) -> None:
    """Refuse, before anything is written, a device this machine cannot compile for."""
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r} for --backend inductor; choose one of {DEVICES}")
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(
            "--backend inductor --device cuda needs an NVIDIA GPU, and none is visible here "
            "(torch.cuda.is_available() is False): AOTInductor generates and tunes its Triton kernels on the GPU "
            "they will run on. Nothing was built. Use --device cpu here, or build on the GPU machine."
        )


def device_versions(device: str) -> dict[str, str]:
    """Manifest ``versions`` entries of an inductor build: the device compiled for (and the GPU model)."""
    v = {"torch": torch.__version__, "inductor_device": device}
    if device == "cuda":
        cap = torch.cuda.get_device_capability()
        v.update({"cuda": str(torch.version.cuda), "gpu": torch.cuda.get_device_name(),
                  "cuda_capability": f"{cap[0]}.{cap[1]}"})
    return v


def _shape(t: Any, dyn: Mapping[int, tuple[str, int, int]] | None = None) -> list:
    dyn = dyn or {}
    return [dyn[i][0] if i in dyn else (int(s) if isinstance(s, int) else str(s)) for i, s in enumerate(t.shape)]


def compile_graph(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic: Mapping[str, Mapping[int, tuple[str, int, int]]],
    device: str = "cpu",
    precision: str = "fp32",
) -> tuple[dict[str, dict], dict[str, dict], float]:
    """Export ``module(*args)`` with the ``dynamic`` axes and compile it into the AOTInductor package ``path``.

    Args:
        module: an eval-mode graph module (tusss.export); not modified (cast / moved on a copy).
        args: example inputs (float32 / int64, CPU); every dynamic axis >= 2 in the example.
        dynamic: ``{input_name: {axis: (dim_name, min, max)}}`` as for the ONNX export.
        device: "cpu" | "cuda".  precision: "fp32" | "fp16" | "bf16" (the module's floating dtype).
    Returns:
        (inputs, outputs, seconds): manifest I/O specs ``{name: {"dtype", "shape"}}`` and the compile time.
    """
    from tusss.export.onnx_io import export_dims, export_program

    require_device(device)
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not an inductor precision; choose one of {PRECISIONS}")
    shapes = export_dims(args, input_names, dynamic)  # refuses a size-1 example on a dynamic axis
    dtype = DTYPES[precision]
    t0 = time.perf_counter()
    mod = module.eval()
    if dtype != torch.float32 or device != "cpu":
        mod = copy.deepcopy(module).to(device=device, dtype=dtype).eval()
    xs = tuple(a.to(device=device, dtype=dtype) if a.is_floating_point() else a.to(device) for a in args)
    ep = export_program(mod, xs, [shapes[n] for n in input_names])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    tmp = path.with_name(path.stem + ".partial.pt2")
    with torch.no_grad():
        torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp))
    os.replace(tmp, path)  # a package only under its final name once complete
    with torch.no_grad():
        outs = mod(*xs)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    ins = {n: {"dtype": DTYPE_NAMES[a.dtype], "shape": _shape(a, dynamic.get(n))} for n, a in zip(input_names, xs)}
    out_spec = {n: {"dtype": "float32", "shape": _shape(o)} for n, o in zip(output_names, outs)}
    return ins, out_spec, time.perf_counter() - t0


class InductorGraph:
    """An AOTInductor package behind the engine's graph-runner interface.

    Args:
        path: the ``.pt2`` package.  inputs: manifest input specs (order = the graph's positional inputs).
        outputs: output names.  device: the device the package was compiled for.
        batched / min_batch: the inputs sharing the batch axis and the smallest batch the package takes. A graph
            traced through open_clip's ``nn.MultiheadAttention`` keeps a runtime assert "batch != 1"; its batch 1
            is run as batch 2 (the row repeated; rows are independent) and the extra output row dropped.
    """

    def __init__(self, path: str | os.PathLike, inputs: Mapping[str, Mapping], outputs: list[str],
                 device: str = "cpu", *, batched: Sequence[str] = (), min_batch: int = 1) -> None:
        self.path = Path(path)
        self.inputs = dict(inputs)
        self.output_names = list(outputs)
        self.device = device
        self.batched = tuple(batched)
        self.min_batch = int(min_batch)
        self.providers = [f"inductor-{device}"]
        try:
            self.model = torch._inductor.aoti_load_package(str(self.path))
        except Exception as e:  # truncated zip, package of another torch build
            raise CorruptFileError(f"cannot load AOTInductor package {self.path}: {e}") from e

    def run(self, feeds: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Run once on ``feeds`` (torch tensors, any device); returns float32 tensors on the package's device."""
        args = []
        n = pad = 0
        for name, spec in self.inputs.items():
            if name not in feeds:
                raise InputError(f"engine graph {self.path.name}: input '{name}' not given")
            t = torch.as_tensor(feeds[name]).to(device=self.device, dtype=_BY_NAME[spec["dtype"]])
            if name in self.batched:
                n = int(t.shape[0])
                pad = max(0, self.min_batch - n)
                if pad and n:
                    t = torch.cat([t, t[-1:].expand(pad, *t.shape[1:])], 0)
            args.append(t.contiguous())
        with torch.no_grad():
            out = self.model(*args)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        return [(o[:n] if pad and n else o).float() for o in outs]


def load_graphs(engine_dir: Path, manifest: Any) -> dict[str, InductorGraph]:
    """The inductor graphs of an engine directory, after the torch-version and device checks."""
    built = manifest.versions.get("torch")
    if built != torch.__version__:
        raise EngineMismatchError(
            f"engine {engine_dir} was compiled by AOTInductor of torch {built}, this is torch {torch.__version__}: "
            "AOTInductor packages are tied to the torch build that compiled them; rebuild with "
            "`tusss-engine build --backend inductor`"
        )
    device = manifest.versions.get("inductor_device", "cpu")
    if device not in DEVICES:
        raise CorruptFileError(f"engine {engine_dir}: unknown inductor device {device!r} (known: {DEVICES})")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"engine {engine_dir} was compiled for CUDA ({manifest.versions.get('gpu')}), and no GPU is visible "
                "here; rebuild with --device cpu to run it on this machine"
            )
        cap = torch.cuda.get_device_capability()
        want = manifest.versions.get("cuda_capability")
        if want and want != f"{cap[0]}.{cap[1]}":
            raise EngineMismatchError(
                f"engine {engine_dir} was compiled for a GPU of compute capability {want} "
                f"({manifest.versions.get('gpu')}), this GPU ({torch.cuda.get_device_name()}) has "
                f"{cap[0]}.{cap[1]}; rebuild on this GPU"
            )
    from .runtime import _BATCH_AXIS

    graphs = {}
    for name, g in manifest.graphs.items():
        sym, batched = _BATCH_AXIS[name]
        graphs[name] = InductorGraph(engine_dir / g.plan, g.inputs, list(g.outputs), device, batched=batched,
                                     min_batch=g.ranges.get(sym, [1])[0])
    return graphs


def _runs_batch_one(pkg: Path, ins: Mapping, outs: Mapping, device: str, spec: Mapping[str, Any],
                    batched: Sequence[str]) -> bool:
    """Whether the compiled package accepts batch 1 (the example inputs cut to one row)."""
    g = InductorGraph(pkg, ins, list(outs), device)
    feeds = {n: (a[:1] if n in batched else a) for n, a in zip(spec["inputs"], spec["args"])}
    try:
        g.run(feeds)
        return True
    except RuntimeError:  # "Expected Ne(s, 1) to be True": a shape assert kept from the export
        return False


def build_graphs(out: Path, specs: Mapping[str, Mapping[str, Any]], wanted: list[str], *, device: str,
                 precision: str, say: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, float]]:
    """Compile the ``wanted`` graph specs into ``out/<graph>.pt2``; returns (manifest entries, seconds)."""
    from tusss.export.onnx_io import sha256_file

    from .build import _union
    from .manifest import GraphEntry
    from .runtime import _BATCH_AXIS

    entries: dict[str, Any] = {}
    secs: dict[str, float] = {}
    for name in wanted:
        sp = specs[name]
        pkg = out / f"{name}.pt2"
        say(f"[build] {name}: torch.export + AOTInductor ({device}, {precision}) ...")
        ins, outs, secs[name] = compile_graph(sp["module"], sp["args"], pkg, input_names=sp["inputs"],
                                              output_names=sp["outputs"], dynamic=sp["dynamic"], device=device,
                                              precision=precision)
        ranges = _union(sp["profiles"])
        sym, batched = _BATCH_AXIS[name]
        if ranges.get(sym, [2])[0] < 2 and not _runs_batch_one(pkg, ins, outs, device, sp, batched):
            ranges[sym][0] = 2
            say(f"[build] {name}: the package asserts batch != 1; the runner runs batch 1 as batch 2")
        entries[name] = GraphEntry(onnx="", inputs=ins, outputs=outs, ranges=ranges, profiles=sp["profiles"],
                                   files={pkg.name: {"bytes": pkg.stat().st_size, "sha256": sha256_file(pkg)}},
                                   plan=pkg.name)
        say(f"[build] {name}: {secs[name]:.1f} s, {pkg.stat().st_size / 1e6:.1f} MB")
    return entries, secs
