"""The ``tusss::masked_dual_attention`` custom op: ``torch.library.opcheck``, its result against a plain two-softmax
computation, and proof that it is what runs in ``DBAClip.embed_masks`` and in the exported windows graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests._kernels_helpers import (
    attention_inputs,
    one_thread,  # noqa: F401 (autouse fixture: torch on one thread)
    rel_err,
)
from tusss.clip import DBAClip
from tusss.kernels import mask_bitsets
from tusss.kernels.attention_torch import build_attention_bias
from tusss.kernels.ops import decompose, masked_dual_attention_op

OP = torch.ops.tusss.masked_dual_attention.default


class CountOp(TorchDispatchMode):
    """Counts the calls of the custom op that reach the dispatcher (every call, whichever kernel it picks)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is OP:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def _plain(q, k, v, bias, scale, mean):
    """Two explicit softmaxes in float64 with a (B, L, L) additive bias (or none)."""
    q, k, v = q.double(), k.double(), v.double()
    b = 0.0 if bias is None else bias.double()[:, None]
    a = torch.softmax(scale * q @ q.transpose(-1, -2) + b, -1) + torch.softmax(scale * k @ k.transpose(-1, -2) + b, -1)
    return (a * (0.5 if mean else 1.0)) @ v


def _cases():
    q, k, v, tm = attention_inputs(2, 3, (4, 5), 6, seed=1, head_dim=16)
    bits = mask_bitsets(tm)
    dense = build_attention_bias(tm, bias_value=-4.0, cls_visible=False, force_diagonal=True)
    s = 16**-0.5
    return [
        ((q, k, v, bits, None, -4.0, False, s, False, True, ""), dense, False),
        ((q, k, v, None, dense, -4.0, True, s, True, False, ""), dense, True),
        ((q, k, v, None, None, -4.0, True, 0.3, False, False, "torch"), None, False),
    ]


@pytest.mark.parametrize("case", range(3), ids=["bitsets", "dense_bias", "no_bias"])
def test_opcheck_and_values(case):
    args, bias, mean = _cases()[case]
    torch.library.opcheck(masked_dual_attention_op, args)  # schema, fake (meta) impl, dispatch, AOT tracing
    out = OP(*args)
    ref = _plain(*args[:3], bias, args[7], mean)
    assert out.shape == args[0].shape and out.dtype == args[0].dtype and out.is_contiguous()
    assert rel_err(out, ref) < 1e-5


def _image_masks(h: int = 90, w: int = 120):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = np.zeros((4, h, w), dtype=bool)
    masks[0, 10:50, 5:70] = True
    masks[1, 40:90, 60:120] = True
    masks[2, :, :30] = True
    masks[3, 20:25, 100:104] = True
    return img, masks


def test_op_is_what_runs_in_embed_masks():
    torch.manual_seed(0)
    clip = DBAClip.from_pretrained("tusss-tiny", weights=None, target_size=112, window_sizes=(64,))
    img, masks = _image_masks()
    lay = clip.layout(img.shape[:2])
    with CountOp() as c:
        clip.embed_masks(img, masks)
    # one last-block call per batch of passes: the global pass + one batch per window size
    assert lay.has_global and len(lay.groups) == 1
    assert c.calls == 2


def test_op_is_what_the_windows_graph_traces():
    from tusss.export.clip import ClipWindowsGraph
    from tusss.export.onnx_io import export_program

    torch.manual_seed(0)
    clip = DBAClip.from_pretrained("tusss-tiny", weights=None)
    g = ClipWindowsGraph(clip.model, clip.cfg).eval()
    px = torch.randn(2, 3, 64, 64)
    tm = torch.rand(2, 3, 16) > 0.5
    bias = build_attention_bias(tm)
    pos = clip.runner.pos_embed((4, 4))
    with CountOp() as c:
        ep = torch.export.export(g, (px, pos, bias), strict=False)
    assert c.calls == 1  # traced once (on fake tensors: its register_fake implementation)
    nodes = [n for n in ep.graph.nodes if n.op == "call_function" and n.target is OP]
    assert len(nodes) == 1  # the last block's attention is one op node in the exported graph
    dec = decompose(ep)
    assert not [n for n in dec.graph.nodes if n.target is OP]
    ref = g(px, pos, bias)
    assert rel_err(dec.module()(px, pos, bias), ref) < 1e-5
    ep2 = export_program(g, (px, pos, bias), None)  # the path of the engine builds
    assert not [n for n in ep2.graph.nodes if n.target is OP]
    assert rel_err(ep2.module()(px, pos, bias), ref) < 1e-5
    # and eager runs the op once per forward
    with CountOp() as c:
        g(px, pos, bias)
    assert c.calls == 1
