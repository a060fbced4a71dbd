"""Precision passes over exported fp32 ONNX graphs.

* fp16: weights and most arithmetic in float16, graph inputs/outputs kept float32, and the ops that
  overflow or lose too much in half precision kept in float32: ``LayerNormalization`` (a plain fp16 ViT
  collapses there), ``Softmax`` and the reductions used by normalisations. TensorRT 11 has no FP16 builder
  flag: precision lives in the ONNX graph and the network is built strongly typed, so this graph *is*
  the precision spec for TensorRT too.
* int8: ONNX Runtime dynamic quantisation (weights int8 per channel, activations quantised on the fly)
  of MatMul/Gemm. A CPU (ONNX Runtime) precision; TensorRT builds use fp32/fp16 graphs.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import onnx

from .onnx_io import EXTERNAL_DATA_BYTES

FP32_OPS = (
    "LayerNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSumSquare",
    "ReduceL2",
    "LpNormalization",
    "Pow",
    "Sqrt",
    "Reciprocal",
)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    data = Path(str(path) + ".data")
    for p in (path, data):
        if p.exists():
            p.unlink()
    if model.ByteSize() > EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return path


def to_fp16(src: str | os.PathLike, dst: str | os.PathLike, keep_fp32: tuple[str, ...] = FP32_OPS) -> Path:
    """Write an fp16 copy of the fp32 graph ``src`` to ``dst``; ``keep_fp32`` op types stay float32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src), load_external_data=True)
    big = model.ByteSize() > EXTERNAL_DATA_BYTES
    if not big:
        # the exporter's value_info is re-inferred by the converter; stale entries would disagree with the
        # converted types (onnx shape inference then fails on the fp16 graph)
        del model.graph.value_info[:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m16 = convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(keep_fp32),
            disable_shape_infer=big,  # onnx shape inference cannot take a > 2 GB proto: use the exporter's
        )
    return _save(m16, Path(dst))


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """ONNX Runtime dynamic int8 quantisation of the MatMul/Gemm weights of ``src`` into ``dst``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    for p in (dst, Path(str(dst) + ".data")):
        if p.exists():
            p.unlink()
    big = sum(p.stat().st_size for p in Path(src).parent.glob(Path(src).name + "*")) > EXTERNAL_DATA_BYTES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
            use_external_data_format=big,
        )
    return dst


def op_input_dtypes(path: str | os.PathLike, op_type: str) -> list[tuple[str, str]]:
    """[(node name, element type of its first input)] for every ``op_type`` node, after shape inference.

    Used to verify that an fp16 graph keeps ``LayerNormalization``/``Softmax`` in float32.
    """
    model = onnx.load(str(path), load_external_data=False)
    model = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input})
    types.update({t.name: t.data_type for t in model.graph.initializer})
    out = []
    for n in model.graph.node:
        if n.op_type == op_type:
            et = types.get(n.input[0], 0)
            out.append((n.name, onnx.TensorProto.DataType.Name(et) if et else "UNKNOWN"))
    return out


def op_histogram(path: str | os.PathLike) -> Counter:
    """Op-type counts of a graph (weights not loaded)."""
    model = onnx.load(str(path), load_external_data=False)
    return Counter(n.op_type for n in model.graph.node)
