"""Export wrappers vs the original PyTorch code, ONNX Runtime parity of every graph, precision passes.

References: segment_anything's own prompt encoder + mask decoder / image encoder, tusss' DBA-CLIP
``TowerRunner.features`` (its own attention-bias code) and open_clip's ``encode_text``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _engine_helpers import tiny_engine_dir, tiny_models

from tusss.clip.model import DBAClip
from tusss.engine.build import derive_engine
from tusss.engine.check import check_engine, compare
from tusss.engine.runtime import Engine
from tusss.errors import InputError
from tusss.export.clip import ClipTextGraph, ClipWindowsGraph
from tusss.export.onnx_io import export_module, graph_io
from tusss.export.precision import op_histogram, op_input_dtypes
from tusss.export.sam import SamDecoderGraph, SamEncoderGraph


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.fixture(scope="module")
def engine_dir():
    return tiny_engine_dir()


def _rel(ref: torch.Tensor, got: torch.Tensor) -> float:
    return compare(ref, got)["rel"]


# ------------------------------------------------------------------------------- wrappers vs originals
@torch.no_grad()
@pytest.mark.parametrize("B,N,share", [(1, 1, True), (5, 1, True), (33, 1, True), (4, 3, True), (5, 1, False)])
def test_decoder_graph_matches_segment_anything(models, B, N, share):
    sam = models.mask_generator.sam
    g = torch.Generator().manual_seed(B * 10 + N)
    emb = torch.randn(1, 32, 16, 16, generator=g)
    pts = torch.rand(B, N, 2, generator=g) * 256
    lab = (torch.rand(B, N, generator=g) > 0.3).float()  # positive and negative points
    sp, de = sam.prompt_encoder(points=(pts, lab), boxes=None, masks=None)
    ref_m, ref_i = sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sp, de, multimask_output=True)
    m, i = SamDecoderGraph(sam, share_first_layer=share)(emb, pts, lab)
    assert m.shape == ref_m.shape == (B, 3, 64, 64) and i.shape == (B, 3)
    assert _rel(ref_m, m) < 1e-5 and _rel(ref_i, i) < 1e-5


@torch.no_grad()
def test_encoder_graph_matches_image_encoder(models):
    sam = models.mask_generator.sam
    x = torch.randn(3, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    ref = sam.image_encoder(x)
    got = SamEncoderGraph(sam)(x)
    assert got.shape == ref.shape
    assert _rel(ref, got) < 1e-5  # LayerNorm2d re-expressed as layer_norm: same maths, float rounding only


@torch.no_grad()
@pytest.mark.parametrize("preset,over", [("reference", {}), ("reference", {"attention_mode": "mean"}),
                                         ("reference", {"cls_visible": False}), ("plain", {}),
                                         ("maskclip", {}), ("sclip", {})])
def test_windows_graph_matches_tower_runner(preset, over):
    torch.manual_seed(3)
    clip = DBAClip.from_pretrained("tusss-tiny", weights=None, preset=preset, **over)
    from tusss.clip.attention import build_attention_bias

    cfg, runner = clip.cfg, clip.runner
    g = torch.Generator().manual_seed(4)
    for n, H, W in [(3, 224, 224), (1, 448, 608)]:
        h, w = H // 16, W // 16
        px = torch.randn(n, 3, H, W, generator=g)
        tm = torch.rand(n, 5, h * w, generator=g) > 0.6
        ref = runner.features(px, tm if cfg.bias != "none" else None)
        if cfg.bias == "none":
            bias = torch.zeros(n, h * w + 1, h * w + 1)
        else:
            bias = build_attention_bias(tm, bias_value=cfg.bias_value, cls_visible=cfg.cls_visible)
        got = ClipWindowsGraph(clip.model, cfg)(px, runner.pos_embed((h, w)), bias).reshape(ref.shape)
        assert _rel(ref, got) < 1e-5, (preset, over, n, H, W)


@torch.no_grad()
def test_text_graph_matches_open_clip(models):
    clip = models.dbaclip
    tok = clip.tokenizer(["a photo of a cat.", "person with clothes,people,human", "x"])
    ref = clip.model.encode_text(tok)
    got = ClipTextGraph(clip.model)(tok, tok.argmax(-1))
    assert _rel(ref, got) < 1e-6


def test_export_refuses_batch1_example(models, tmp_path):
    dec = SamDecoderGraph(models.mask_generator.sam)
    args = (torch.randn(1, 32, 16, 16), torch.rand(1, 1, 2), torch.ones(1, 1))
    with pytest.raises(InputError, match="size-1 example fixes the axis"):
        export_module(dec, args, tmp_path / "d.onnx", input_names=["image_embeddings", "point_coords", "point_labels"],
                      output_names=["m", "i"], dynamic={"point_coords": {0: ("B", 1, 64)}})


# ------------------------------------------------------------------------------- ONNX Runtime parity
def test_engine_graphs_have_dynamic_batch_axes(engine_dir):
    io = {g: graph_io(engine_dir / f"{g}.onnx") for g in ("sam_encoder", "sam_decoder", "clip_windows", "clip_text")}
    assert isinstance(io["sam_encoder"][0]["images"][0], str)
    assert isinstance(io["sam_decoder"][0]["point_coords"][0], str)
    assert io["sam_decoder"][0]["image_embeddings"] == [1, 32, 16, 16]  # one image shared by the prompt batch
    assert io["sam_decoder"][1]["low_res_masks"][1:] == [3, 64, 64]
    assert all(isinstance(d, str) for d in io["clip_windows"][0]["pixels"][:1] + io["clip_windows"][0]["pixels"][2:])
    assert isinstance(io["clip_text"][0]["tokens"][0], str)


def test_onnxruntime_parity_every_graph(models, engine_dir):
    eng = Engine.load(engine_dir)
    assert all(g.providers == ["CPUExecutionProvider"] for g in eng.graphs.values())
    rep = check_engine(eng, models.mask_generator.sam, models.dbaclip, prompt_batches=(1, 7, 64),
                       window_counts=(1, 3, 5), log=lambda s: None)
    cases = {(r.graph, r.case) for r in rep.rows}
    assert {("sam_decoder", "B=64"), ("clip_windows", "N=5 224x224"), ("clip_windows", "N=1 448x496")} <= cases
    assert {r.graph for r in rep.rows} == {"sam_encoder", "sam_decoder", "clip_windows", "clip_text"}
    for r in rep.rows:
        assert r.rel <= 1e-4 and r.cosine > 0.99999, r
        if r.mask_iou is not None:
            assert r.mask_iou > 0.999
    assert rep.ok


def test_fp16_keeps_layernorm_softmax_fp32_and_matches(models, engine_dir, tmp_path):
    derive_engine(engine_dir, tmp_path / "fp16", precision="fp16", log=None)
    for g in ("sam_encoder", "sam_decoder", "clip_windows", "clip_text"):
        path = tmp_path / "fp16" / f"{g}.onnx"
        ln = op_input_dtypes(path, "LayerNormalization")
        sm = op_input_dtypes(path, "Softmax")
        mm = op_input_dtypes(path, "MatMul")
        assert ln and all(t == "FLOAT" for _, t in ln), (g, ln)
        assert sm and all(t == "FLOAT" for _, t in sm), (g, sm)
        assert any(t == "FLOAT16" for _, t in mm), (g, mm)  # the rest did go to half precision
        graph = onnx.load(str(path), load_external_data=False).graph
        F, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
        assert all(v.type.tensor_type.elem_type in (F, I64) for v in graph.input)  # fp32 I/O kept
        assert all(v.type.tensor_type.elem_type == F for v in graph.output)
    eng = Engine.load(tmp_path / "fp16")
    assert eng.manifest.precision == "fp16"
    rep = check_engine(eng, models.mask_generator.sam, models.dbaclip, log=lambda s: None)
    print("\n" + rep.table())
    assert rep.ok  # cosine >= 0.999 on embeddings, mask IoU >= 0.98


def test_int8_dynamic_quantisation_reported(models, engine_dir, tmp_path):
    derive_engine(engine_dir, tmp_path / "int8", precision="int8", log=None)
    hist = op_histogram(tmp_path / "int8" / "clip_windows.onnx")
    assert hist["DynamicQuantizeLinear"] > 0 and hist["MatMulInteger"] > 0
    eng = Engine.load(tmp_path / "int8")
    rep = check_engine(eng, models.mask_generator.sam, models.dbaclip, log=lambda s: None)
    print("\n" + rep.table())  # int8 cosines are reported (pytest -s), the rule is cosine >= 0.99
    cos = {(r.graph, r.output): r.cosine for r in rep.rows}
    assert all(np.isfinite(c) for c in cos.values())
    assert cos[("clip_windows", "features")] > 0.9 and cos[("clip_text", "text_features")] > 0.9
    assert rep.ok == all(r.cosine >= 0.99 for r in rep.rows)


# ------------------------------------------------------------------------------- vit_b, once
@pytest.fixture(scope="module")
def vitb_encoder(tmp_path_factory):
    from tusss.masks.sam_registry import build_sam

    torch.manual_seed(0)
    sam, _ = build_sam("vit_b", None)
    path = tmp_path_factory.mktemp("vitb") / "sam_encoder.onnx"
    export_module(SamEncoderGraph(sam), (torch.randn(2, 3, 1024, 1024),), path, input_names=["images"],
                  output_names=["image_embeddings"], dynamic={"images": {0: ("N", 1, 8)}})
    return sam, path


@torch.no_grad()
def test_vit_b_encoder_onnxruntime_parity(vitb_encoder):
    sam, path = vitb_encoder
    ins, outs = graph_io(path)
    assert isinstance(ins["images"][0], str) and ins["images"][1:] == [3, 1024, 1024]
    assert outs["image_embeddings"][1:] == [256, 64, 64]
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(5))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])
    ref = sam.image_encoder(x)
    r = compare(ref, got)
    assert r["rel"] <= 1e-4 and r["cosine"] > 0.99999, r


def test_external_data_for_big_graphs(models, engine_dir, tmp_path, monkeypatch):
    # graphs over the limit (vit_h: 2.5 GB) are written with ONNX external data; use a tiny limit here
    import tusss.export.precision as precision
    from tusss.engine.manifest import read_manifest
    from tusss.errors import CorruptFileError

    monkeypatch.setattr(precision, "EXTERNAL_DATA_BYTES", 1000)
    derive_engine(engine_dir, tmp_path / "ext", precision="fp16", log=None)
    man = read_manifest(tmp_path / "ext")
    for g in ("sam_encoder", "sam_decoder", "clip_windows", "clip_text"):
        assert (tmp_path / "ext" / f"{g}.onnx.data").is_file() and f"{g}.onnx.data" in man.graphs[g].files
    rep = check_engine(Engine.load(tmp_path / "ext"), models.mask_generator.sam, models.dbaclip, log=lambda s: None)
    assert rep.ok
    (tmp_path / "ext" / "clip_text.onnx.data").unlink()
    with pytest.raises(CorruptFileError, match="incomplete: file 'clip_text.onnx.data'"):
        Engine.load(tmp_path / "ext")
