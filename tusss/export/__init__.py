"""Export of the networks to ONNX graphs (used by :mod:`tusss.engine` to build engines).

The graph modules wrap the PyTorch models with fixed, export-friendly signatures; ``export_module`` writes one
ONNX file (dynamo exporter, dynamic axes); ``to_fp16`` / ``quantize_int8`` derive lower-precision graphs::

    from tusss.export import ClipWindowsGraph, export_module

Names are imported lazily: ``import tusss.export`` loads neither ``onnx`` nor the exporter.
"""

from __future__ import annotations

from tusss._lazy import lazy_exports

_LAZY: dict[str, str] = {
    # graph modules
    "SamEncoderGraph": "tusss.export.sam",
    "SamDecoderGraph": "tusss.export.sam",
    "ClipWindowsGraph": "tusss.export.clip",
    "ClipTextGraph": "tusss.export.clip",
    # ONNX files
    "export_module": "tusss.export.onnx_io",
    "graph_io": "tusss.export.onnx_io",
    "graph_files": "tusss.export.onnx_io",
    "check_dynamic_axes": "tusss.export.onnx_io",
    "sha256_file": "tusss.export.onnx_io",
    # precision
    "to_fp16": "tusss.export.precision",
    "quantize_int8": "tusss.export.precision",
    "op_histogram": "tusss.export.precision",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
