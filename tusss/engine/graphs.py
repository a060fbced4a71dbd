"""Graph runners: one exported graph behind a uniform ``run(feeds) -> outputs`` call.

* :class:`OrtGraph`: ONNX Runtime session (CPU here; CUDA / TensorRT providers where installed). A GPU
  provider that silently falls back to CPU (``onnxruntime-gpu`` lists CUDA without a GPU) is detected
  with ``session.get_providers()`` and reported.
* :class:`TrtGraph`: a TensorRT plan (lazy ``import tensorrt``), see :mod:`tusss.engine.tensorrt`.

Inputs and outputs are torch tensors; a batch larger than the graph's maximum (manifest ranges) is split
along axis 0 by :func:`run_chunked`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from tusss.errors import CorruptFileError, InputError

log = logging.getLogger(__name__)

_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


def _ort():
    import onnxruntime as ort

    return ort


def default_providers() -> list[str]:
    """CUDA (then CPU) when ONNX Runtime has a CUDA provider *and* torch sees a GPU, else CPU."""
    avail = _ort().get_available_providers()
    prov = []
    if "CUDAExecutionProvider" in avail and torch.cuda.is_available():
        prov.append("CUDAExecutionProvider")
    return prov + ["CPUExecutionProvider"]


class OrtGraph:
    """An ONNX graph run by ONNX Runtime.

    Args:
        path: the .onnx file (its external data beside it).
        inputs: manifest input specs ``{name: {"dtype", "shape"}}`` (order = graph input order).
        providers: ONNX Runtime execution providers; default :func:`default_providers`.
        threads: intra-op threads (0 = ONNX Runtime's default).
        precision: the engine's precision (fp16 graphs get ONNX Runtime's "extended" optimisation level).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        inputs: Mapping[str, Mapping],
        outputs: Sequence[str],
        providers: Sequence[str] | None = None,
        threads: int = 0,
        precision: str = "fp32",
    ) -> None:
        ort = _ort()
        self.path = Path(path)
        self.inputs = dict(inputs)
        self.output_names = list(outputs)
        so = ort.SessionOptions()
        # ORT 1.32's layout (NCHWc) pass crashes at session creation on some fp16 graphs: stop one level below
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if precision == "fp16"
                                       else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        if threads:
            so.intra_op_num_threads = int(threads)
        so.log_severity_level = 3
        want = list(providers) if providers else default_providers()
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=want)
        except Exception as e:  # invalid protobuf, missing external data, unsupported op ...
            raise CorruptFileError(f"ONNX Runtime cannot load engine graph {self.path}: {e}") from e
        got = self.session.get_providers()
        missing = [p for p in want if p not in got and p != "CPUExecutionProvider"]
        if missing:
            log.warning("%s: providers %s unavailable, running on %s", self.path.name, missing, got)
        self.providers = got
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(self.inputs):
            raise CorruptFileError(
                f"engine graph {self.path} has inputs {names}, the manifest says {list(self.inputs)}"
            )

    @property
    def device(self) -> str:
        gpu = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        return "cuda" if self.providers and self.providers[0] in gpu else "cpu"

    def run(self, feeds: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Run once on ``feeds`` (torch tensors, any device); returns CPU torch tensors (graph output order)."""
        arrs = {}
        for name, spec in self.inputs.items():
            if name not in feeds:
                raise InputError(f"engine graph {self.path.name}: input '{name}' not given")
            t = feeds[name]
            a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
            arrs[name] = np.ascontiguousarray(a, dtype=_NP[spec["dtype"]])
        outs = self.session.run(self.output_names, arrs)
        return [torch.from_numpy(o) for o in outs]


def run_chunked(
    run: Callable[[Mapping[str, torch.Tensor]], list[torch.Tensor]],
    feeds: Mapping[str, torch.Tensor],
    batched: Sequence[str],
    max_batch: int,
) -> list[torch.Tensor]:
    """Call ``run`` on slices of at most ``max_batch`` rows of the ``batched`` inputs; concat outputs on 0."""
    n = int(feeds[batched[0]].shape[0])
    if n <= max_batch:
        return run(feeds)
    parts: list[list[torch.Tensor]] = []
    for s in range(0, n, max_batch):
        sub = {k: (v[s : s + max_batch] if k in batched else v) for k, v in feeds.items()}
        parts.append(run(sub))
    return [torch.cat([p[i] for p in parts], 0) for i in range(len(parts[0]))]
