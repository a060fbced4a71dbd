"""TensorRT backend: build plans from the engine's ONNX graphs and run them (TensorRT 10 / 11 Python API).

``tensorrt`` is imported lazily, only here. Plans are built **strongly typed**
(``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): the precision of every layer is the one of the ONNX
graph (TensorRT 11 removed the FP16 builder flag), so an fp16 engine is built from the fp16 graph whose
LayerNorm / Softmax / reductions are fp32 (:mod:`tusss.export.precision`). Each graph gets one
optimisation profile per manifest profile (e.g. DBA-CLIP: 224 x 224 windows, and the global pass), and a
timing cache shared by all graphs of the directory (``timing.cache``) makes rebuilds fast.

Nothing here runs on a machine without an NVIDIA GPU: :func:`require_tensorrt` says so before any file
is written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tusss.errors import CorruptFileError, InputError

from .errors import BackendUnavailableError

WORKSPACE_BYTES = 8 << 30


def require_tensorrt() -> Any:
    """Return the ``tensorrt`` module, or raise :class:`BackendUnavailableError` saying what is missing."""
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            "--backend tensorrt needs an NVIDIA GPU, and none is visible here (torch.cuda.is_available() is "
            "False): TensorRT plans are built on the GPU type they will run on. Nothing was built. "
            "Build with --backend onnxruntime on this machine, or run the build on the GPU machine."
        )
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailableError(
            "--backend tensorrt needs the TensorRT Python package (pip install 'tusss[tensorrt]', TensorRT >= 10); "
            f"import failed: {e}. Nothing was built."
        ) from e
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise BackendUnavailableError(f"TensorRT {trt.__version__} found; tusss needs TensorRT >= 10")
    return trt


def resolve_shape(shape: list, profile: Mapping[str, list[int]], which: int, what: str) -> tuple[int, ...]:
    """Concrete dims of a manifest shape for profile point ``which`` (0 min, 1 opt, 2 max)."""
    dims = []
    for d in shape:
        if isinstance(d, int):
            dims.append(d)
        elif d in profile:
            dims.append(int(profile[d][which]))
        else:
            raise InputError(f"{what}: symbolic dimension {d!r} has no range in the optimisation profile")
    return tuple(dims)


def build_plan(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    entry: Any,
    *,
    timing_cache: str | os.PathLike | None = None,
    workspace: int = WORKSPACE_BYTES,
) -> Path:
    """Parse ``onnx_path`` and write a serialized TensorRT plan to ``plan_path``.

    ``entry`` is the graph's :class:`tusss.engine.manifest.GraphEntry` (inputs and profiles).
    """
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves external data next to the file
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CorruptFileError(f"TensorRT cannot parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    cache_path = Path(timing_cache) if timing_cache else None
    blob = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    for prof in entry.profiles:
        p = builder.create_optimization_profile()
        for name, spec in entry.inputs.items():
            if all(isinstance(d, int) for d in spec["shape"]):
                continue
            lo, opt, hi = (resolve_shape(spec["shape"], prof, i, f"{onnx_path}:{name}") for i in range(3))
            p.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(p)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CorruptFileError(f"TensorRT failed to build a plan from {onnx_path} (see the TensorRT log above)")
    plan_path = Path(plan_path)
    plan_path.write_bytes(bytes(serialized))
    if cache_path is not None:
        cache_path.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return plan_path


def _torch_dtype(trt: Any, dt: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int64: torch.int64, trt.bool: torch.bool}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[dt]


class TrtGraph:
    """A TensorRT plan with one execution context per optimisation profile; ``run`` like OrtGraph."""

    def __init__(self, plan_path: str | os.PathLike, entry: Any) -> None:
        trt = require_tensorrt()
        self.trt = trt
        self.path = Path(plan_path)
        self.entry = entry
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise CorruptFileError(
                f"TensorRT {trt.__version__} cannot load plan {self.path} (built by another TensorRT version or for "
                "another GPU?); rebuild the engine on this machine"
            )
        self.stream = torch.cuda.Stream()
        self.contexts = []
        for i in range(max(1, self.engine.num_optimization_profiles)):
            ctx = self.engine.create_execution_context()
            ctx.set_optimization_profile_async(i, self.stream.cuda_stream)
            self.contexts.append(ctx)
        self.stream.synchronize()
        self.output_names = list(entry.outputs)
        self.providers = ["TensorRT"]
        self.device = "cuda"

    def _profile_for(self, shapes: Mapping[str, tuple[int, ...]]) -> int:
        for i in range(len(self.contexts)):
            ok = True
            for name, shp in shapes.items():
                if self.engine.get_tensor_shape(name).__len__() == 0:
                    continue
                lo, _, hi = self.engine.get_tensor_profile_shape(name, i)
                if any(s < a or s > b for s, a, b in zip(shp, lo, hi)):
                    ok = False
                    break
            if ok:
                return i
        raise InputError(f"{self.path.name}: input shapes {dict(shapes)} are outside every optimisation profile")

    def run(self, feeds: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        trt = self.trt
        ins = {}
        for name in self.entry.inputs:
            dt = _torch_dtype(trt, self.engine.get_tensor_dtype(name))
            ins[name] = torch.as_tensor(feeds[name]).to("cuda", dt).contiguous()
        dyn = {n: tuple(t.shape) for n, t in ins.items()
               if not all(isinstance(d, int) for d in self.entry.inputs[n]["shape"])}
        ctx = self.contexts[self._profile_for(dyn)]
        with torch.cuda.stream(self.stream):
            for name, t in ins.items():
                ctx.set_input_shape(name, tuple(t.shape))
                ctx.set_tensor_address(name, t.data_ptr())
            outs = []
            for name in self.output_names:
                shp = tuple(ctx.get_tensor_shape(name))
                buf = torch.empty(shp, dtype=_torch_dtype(trt, self.engine.get_tensor_dtype(name)), device="cuda")
                ctx.set_tensor_address(name, buf.data_ptr())
                outs.append(buf)
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution of {self.path.name} failed")
        self.stream.synchronize()
        return [o.float() for o in outs]
