"""ONNX export and file helpers shared by every graph of an engine.

Export goes through the dynamo exporter (``torch.onnx.export(..., dynamo=True)``): the legacy TorchScript
exporter bakes SAM's original image size into the decoder and its fp16 conversion fails in ONNX Runtime.
Example inputs must have every dynamic axis >= 2 (a batch-1 example silently fixes that axis); the
exported graph's input shapes are checked against the requested dynamic axes after export.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from tusss.errors import CorruptFileError, InputError
from tusss.weights import state_dict_hash  # noqa: F401 (its one home; re-exported for the engine)

OPSET = 18  # LayerNormalization (17) + ReduceMean with axes input (18); accepted by TensorRT 10/11
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's hard limit is 2 GiB; leave room for the graph itself
log = logging.getLogger(__name__)


def export_dims(args: Sequence[torch.Tensor], input_names: Sequence[str],
                dynamic: Mapping[str, Mapping[int, tuple[str, int, int]]]) -> dict[str, dict[int, object] | None]:
    """``torch.export`` dynamic shapes ``{input_name: {axis: Dim} or None}`` of a ``dynamic`` spec
    ``{input_name: {axis: (dim_name, min, max)}}`` (axes sharing a dim_name share one ``Dim``); refuses an example
    of size 1 on a dynamic axis (it would fix the axis)."""
    from torch.export import Dim

    dims: dict[str, object] = {}
    shapes: dict[str, dict[int, object] | None] = {}
    for i, name in enumerate(input_names):
        spec = dynamic.get(name)
        if not spec:
            shapes[name] = None
            continue
        shapes[name] = {}
        for axis, (dname, lo, hi) in spec.items():
            if args[i].shape[axis] < 2:
                raise InputError(
                    f"example input '{name}' has size {args[i].shape[axis]} on dynamic axis {axis}: "
                    "use an example >= 2 (a size-1 example fixes the axis in the exported graph)"
                )
            if dname not in dims:
                dims[dname] = Dim(dname, min=lo, max=hi)
            shapes[name][axis] = dims[dname]
    return shapes


def export_module(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic: Mapping[str, Mapping[int, tuple[str, int, int]]],
    opset: int = OPSET,
    optimize: bool = True,
) -> Path:
    """Export ``module(*args)`` to ``path`` with the dynamo exporter.

    Args:
        module: eval-mode module; its forward takes ``args`` positionally.
        args: example inputs; every axis named in ``dynamic`` must be >= 2 in the example.
        input_names, output_names: ONNX graph input / output names (same order as args / outputs).
        dynamic: ``{input_name: {axis: (dim_name, min, max)}}``; axes sharing a dim_name share a symbol.
        opset: ONNX opset.
        optimize: run the exporter's graph optimiser (constant folding, dead-code removal); False exports
            faster and leaves the optimisation to ONNX Runtime / TensorRT at load time.

    Returns the written path. Weights go to ``<path>.data`` (ONNX external data) only when the graph is
    over 2 GB.
    """
    path = Path(path)
    shapes = export_dims(args, input_names, dynamic)
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            module,
            tuple(args),
            None,
            dynamo=True,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=shapes,
            opset_version=opset,
            optimize=optimize,
            verbose=False,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    for p in (path, Path(str(path) + ".data")):
        if p.exists():
            p.unlink()
    nbytes = sum(int(p.numel()) * p.element_size() for p in module.state_dict().values())
    prog.save(str(path), external_data=nbytes > EXTERNAL_DATA_BYTES)
    check_dynamic_axes(path, dynamic)
    return path


def export_program(module: nn.Module, args: Sequence[torch.Tensor], dynamic_shapes: Sequence[object] | None
                   ) -> torch.export.ExportedProgram:
    """``torch.export`` of ``module(*args)`` (eval mode, no grad) with tusss' custom ops decomposed into their
    PyTorch twins (:func:`tusss.kernels.ops.decompose`): the program AOTInductor compiles (the ONNX exporter
    captures the same way and decomposes the op through the global decomposition table, see tusss.kernels.ops).
    ``dynamic_shapes``: one ``{axis: Dim}`` (or None) per positional argument."""
    # torch.onnx.export's own capture (non-strict torch.export with 0/1-oblivious sizes and its retries): a plain
    # torch.export.export call guards the batch axis != 1 inside open_clip's nn.MultiheadAttention
    from torch.onnx._internal.exporter import _capture_strategies

    from tusss.kernels.ops import decompose

    names = list(inspect.signature(module.forward).parameters)[: len(args)]
    shapes = dict(zip(names, dynamic_shapes)) if dynamic_shapes else None
    errors = []
    with torch.no_grad():
        for strategy in _capture_strategies.CAPTURE_STRATEGIES:
            res = strategy(verbose=False)(module.eval(), tuple(args), None, dynamic_shapes=shapes)
            if res.success and res.exported_program is not None:
                return decompose(res.exported_program)
            errors.append(f"{strategy.__name__}: {res.exception}")
    raise InputError(f"torch.export of {type(module).__name__} failed: " + "; ".join(errors))


def graph_io(path: str | os.PathLike) -> tuple[dict[str, list], dict[str, list]]:
    """(inputs, outputs) of an ONNX file as ``{name: [dim or symbol, ...]}`` (weights not loaded)."""
    m = onnx.load(str(path), load_external_data=False)

    def dims(vi: onnx.ValueInfoProto) -> list:
        return [d.dim_param if d.dim_param else int(d.dim_value) for d in vi.type.tensor_type.shape.dim]

    init = {i.name for i in m.graph.initializer}
    ins = {vi.name: dims(vi) for vi in m.graph.input if vi.name not in init}
    outs = {vi.name: dims(vi) for vi in m.graph.output}
    return ins, outs


def check_dynamic_axes(path: str | os.PathLike, dynamic: Mapping[str, Mapping[int, tuple]]) -> None:
    """Raise when an axis requested dynamic came out as a fixed number in the ONNX graph."""
    ins, _ = graph_io(path)
    for name, spec in dynamic.items():
        for axis in spec:
            d = ins[name][axis]
            if not isinstance(d, str):
                raise CorruptFileError(f"{path}: input '{name}' axis {axis} was exported fixed to {d}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def graph_files(path: str | os.PathLike) -> list[Path]:
    """The ONNX file and its external-data file(s), if any."""
    path = Path(path)
    files = [path]
    m = onnx.load(str(path), load_external_data=False)
    locs = set()
    for t in m.graph.initializer:
        for kv in t.external_data:
            if kv.key == "location":
                locs.add(kv.value)
    files += [path.parent / loc for loc in sorted(locs)]
    return files

