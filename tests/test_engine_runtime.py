"""MaskGenerator / DBAClip running on an engine vs the same objects in PyTorch; CLI check/info; bench."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _engine_helpers import copy_engine, tiny_engine_dir, tiny_models
from segment_anything import SamPredictor

from tusss.engine.bench import BenchConfig, format_table, run_bench, synthetic_images
from tusss.engine.check import compare
from tusss.engine.cli import main
from tusss.engine.runtime import Engine, EngineSamPredictor
from tusss.masks.generator import MaskGenerator


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.fixture(scope="module")
def engine():
    return Engine.load(tiny_engine_dir())


@torch.no_grad()
def test_engine_predictor_matches_segment_anything_predictor(models, engine):
    sam = models.mask_generator.sam
    img = synthetic_images(1, (180, 240), seed=1)[0]
    ref, eng = SamPredictor(sam), EngineSamPredictor(sam, engine)
    ref.set_image(img)
    eng.set_image(img)
    assert compare(ref.features, eng.features)["rel"] < 1e-4
    pts = torch.as_tensor(ref.transform.apply_coords(np.random.default_rng(0).random((40, 2)) * [240, 180],
                                                     (180, 240)), dtype=torch.float32)[:, None]
    lab = torch.ones(40, 1, dtype=torch.int)
    m_ref, i_ref, lo_ref = ref.predict_torch(pts, lab, multimask_output=True, return_logits=True)
    m_eng, i_eng, lo_eng = eng.predict_torch(pts, lab, multimask_output=True, return_logits=True)  # 40 > max 16
    assert m_eng.shape == m_ref.shape == (40, 3, 180, 240)
    for a, b in ((m_ref, m_eng), (i_ref, i_eng), (lo_ref, lo_eng)):
        assert compare(a, b)["rel"] < 1e-4


@torch.no_grad()
def test_attached_generator_gives_the_same_masks(engine):
    # thresholds off so that random weights still give masks; everything else is the tuss preset
    m = tiny_models(pred_iou_thresh=-100.0, stability_score_thresh=0.0, points_per_side=6, crop_n_layers=1)
    gen = engine.attach(m.mask_generator)
    assert isinstance(gen, MaskGenerator) and gen is not m.mask_generator
    img = synthetic_images(1, (160, 200), seed=2)[0]
    ref, got = m.mask_generator.generate(img), gen.generate(img)
    assert len(got) == len(ref)
    if len(ref):
        assert (got.masks == ref.masks).mean() > 0.999
        np.testing.assert_array_equal(got.level, ref.level)
        np.testing.assert_allclose(got.predicted_iou, ref.predicted_iou, atol=1e-4)


@torch.no_grad()
def test_attached_dbaclip_matches_torch(models, engine):
    clip = models.dbaclip
    eclip = engine.attach(clip)
    img = synthetic_images(1, (150, 230), seed=3)[0]
    masks = np.zeros((4, 150, 230), bool)
    masks[0, :70] = True
    masks[1, 70:, :100] = True
    masks[2, 70:, 100:] = True
    masks[3, 20:60, 30:90] = True  # overlaps mask 0
    ref = clip.embed_masks(img, masks)
    got = eclip.embed_masks(img, masks)  # global pass 448x688 + 7x... windows (more than max 4 per call)
    assert compare(torch.from_numpy(ref), torch.from_numpy(got))["rel"] < 1e-4
    names = ["background", "cat", "person with clothes,people,human"]
    t_ref = clip.encode_text(names, "vild")
    t_got = eclip.encode_text(names, "vild")  # 14 templates x 3 names
    np.testing.assert_allclose(t_got, t_ref, atol=1e-5)
    assert eclip.runner is not clip.runner and eclip.text_encoder is not clip.text_encoder


@torch.no_grad()
def test_attached_objects_run_every_exported_graph_and_no_torch_network():
    """Counts the runs of each engine graph during generate / embed / encode_text and the calls of the PyTorch
    SAM decoder, CLIP last block and text tower (forward hooks): the engine path must use all four graphs and
    never fall back to the PyTorch networks (the old generator decoded with the PyTorch decoder)."""
    from tusss.engine.runtime import EngineSamBackend

    m = tiny_models(pred_iou_thresh=-100.0, stability_score_thresh=0.0, points_per_side=4, crop_n_layers=0)
    eng = Engine.load(tiny_engine_dir())
    gen, clip = eng.attach(m.mask_generator), eng.attach(m.dbaclip)
    torch_calls = {"sam_image_encoder": 0, "sam_mask_decoder": 0, "clip_last_block": 0, "clip_text": 0}

    def hook(name):
        def f(*_a):
            torch_calls[name] += 1
        return f

    sam, model = m.mask_generator.sam, m.dbaclip.model
    hooks = [sam.image_encoder.register_forward_hook(hook("sam_image_encoder")),
             sam.mask_decoder.register_forward_hook(hook("sam_mask_decoder")),
             model.visual.transformer.resblocks[-1].register_forward_hook(hook("clip_last_block")),
             model.transformer.register_forward_hook(hook("clip_text"))]
    try:
        img = synthetic_images(1, (96, 128), seed=4)[0]
        ms = gen.generate(img)
        assert len(ms) > 0
        assert eng.calls["sam_encoder"] == 1 and eng.calls["sam_decoder"] >= 1, dict(eng.calls)
        given = np.zeros((3, 96, 128), bool)
        given[0, :40], given[1, 40:, :60], given[2, 40:, 60:] = True, True, True
        emb = clip.embed_masks(img, given)
        assert emb.shape == (3, clip.embed_dim) and eng.calls["clip_windows"] >= 2  # global pass + windows
        clip.encode_text(["cat", "dog"], "vild")
        assert eng.calls["clip_text"] >= 1
    finally:
        for h in hooks:
            h.remove()
    assert set(eng.calls) == {"sam_encoder", "sam_decoder", "clip_windows", "clip_text"}
    assert torch_calls == {k: 0 for k in torch_calls}, torch_calls
    # the mask-cache key names the backend and precision; the PyTorch generator keeps its own key
    assert isinstance(gen.backend, EngineSamBackend) and gen.config_hash != m.mask_generator.config_hash
    assert m.mask_generator.config_hash == m.mask_generator.config.config_hash("vit_tiny",
                                                                               m.mask_generator.weights_id)


def test_cli_info_and_check(capsys):
    d = str(tiny_engine_dir())
    assert main(["info", d]) == 0
    out = capsys.readouterr().out
    assert "sam_decoder" in out and "precision fp32" in out
    assert main(["check", d]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "clip_windows" in out and "low_res_masks" in out


def test_bench_torch_and_onnxruntime(tmp_path):
    copy_engine(tmp_path / "onnxruntime-fp32")  # reused: the bench builds the same seeded models
    cfg = BenchConfig(sam="vit_tiny", clip="tusss-tiny", images=2, size=(96, 128), points_per_side=4,
                      backends=("torch", "onnxruntime"), engine_dir=str(tmp_path))
    res = run_bench(cfg, log=lambda s: None)
    assert set(res["backends"]) == {"torch", "onnxruntime"}
    ort_setup = res["backends"]["onnxruntime"]["setup"]
    assert ort_setup.get("reused_engine") and ort_setup["providers"] == ["CPUExecutionProvider"]
    for b in res["backends"].values():
        for s in ("masks", "embeddings", "classification"):
            st = b["stages"][s]
            assert st["n"] == 2 and 0 < st["median_s"] <= st["p90_s"] * 1.0001 and st["peak_rss_mb"] > 0
        assert len(b["masks_per_image"]) == 2 and all(n > 0 for n in b["masks_per_image"])
        pr = b["predictor"]  # tusss.Predictor rows on the same models
        assert pr["end_to_end"]["n"] == 2 and pr["given_masks"]["n"] == pr["hand_given_masks"]["n"] == 2
        assert pr["overhead_vs_hand"] is not None
    calls = res["backends"]["onnxruntime"]["graph_calls"]
    assert calls.get("sam_encoder", 0) > 0 and calls.get("sam_decoder", 0) > 0 and calls.get("clip_windows", 0) > 0
    assert res["backends"]["torch"]["graph_calls"] == {}
    table = format_table(res)
    assert "onnxruntime" in table and "embeddings" in table
    json.loads(json.dumps(res))


def test_cli_bench_torch_writes_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(["bench", "--sam", "vit_tiny", "--clip", "tusss-tiny", "--images", "1", "--size", "96x64",
               "--points-per-side", "4", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["config"]["size"] == [64, 96] and res["backends"]["torch"]["stages"]["masks"]["n"] == 1
    assert "images_per_s" in res["backends"]["torch"]["total"]
    assert "median" in capsys.readouterr().out
