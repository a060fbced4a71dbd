"""The materialised DBA attention bias (docs/reference-code.md §2 ``get_mask2mask_att_bias``), for the exported graphs.

DBAClip's last block calls tusss.kernels (``masked_dual_attention``: bitsets and a fused kernel, or the PyTorch
twin that materialises this bias); the ONNX/TensorRT graphs of tusss.export / tusss.engine take the bias as an
input and build it with :func:`build_attention_bias`, whose one home is ``tusss.kernels.attention_torch``.
"""

from tusss.kernels.attention_torch import build_attention_bias

__all__ = ["build_attention_bias"]
