"""tusss.Predictor: against the hand-assembled OVSegmenter path, batched vs per image, engine vs PyTorch,
GLCC classifier + provenance refusal, thread safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from _sam_fakes import install_fakes, make_scene

from tusss.classify import GLCCClassifier, ProvenanceError, TextClassifier
from tusss.clip.model import DBAClip
from tusss.errors import InputError
from tusss.glcc.model import GLCC, GLCCConfig
from tusss.masks.generator import MaskGenerator
from tusss.masks.maskset import MaskSet, masks_to_xywh
from tusss.pipeline import OVSegmenter
from tusss.predictor import Predictor

CLASSES = "cat,dog,sofa"


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    gen = MaskGenerator.from_pretrained("vit_tiny", checkpoint=None, preset="tuss", points_per_side=8)
    install_fakes(gen.sam)
    clip = DBAClip.from_pretrained("tusss-tiny", weights=None, preset="reference")
    return gen, clip


@pytest.fixture(scope="module")
def predictor(models):
    gen, clip = models
    return Predictor(gen, clip, TextClassifier(clip, classes=CLASSES))


def given_masks(h: int, w: int) -> MaskSet:
    m = np.zeros((4, h, w), bool)
    m[0, : h // 2] = True
    m[1, h // 2:, : w // 2] = True
    m[2, h // 2:, w // 2:] = True
    m[3, h // 4: h // 2, w // 4: w // 2] = True
    return MaskSet(masks=m, level=np.array([2, 2, 1, 0], np.int8), predicted_iou=np.full(4, 0.9, np.float32),
                   stability=np.full(4, 0.95, np.float32), area=m.reshape(4, -1).sum(1), bbox=masks_to_xywh(m))


def test_predict_equals_the_hand_assembled_ovsegmenter_path(models, predictor):
    gen, clip = models
    img = make_scene(96, 128)
    seg = predictor.predict(img)
    ref = OVSegmenter(gen, clip, classes=CLASSES).segment(img)  # generate, drop empty, embed, score, paint
    assert len(seg.masks) == len(ref.masks) > 3
    np.testing.assert_array_equal(seg.masks.masks, ref.masks.masks)
    np.testing.assert_allclose(seg.scores, ref.scores, atol=1e-6)
    np.testing.assert_array_equal(seg.labels, ref.labels)
    np.testing.assert_array_equal(seg.label_map, ref.label_map)
    assert seg.class_names == ("background", "cat", "dog", "sofa")
    assert set(seg.timings) >= {"masks", "embed", "classify", "paint", "total"}
    assert seg.timings["total"] >= seg.timings["masks"] + seg.timings["embed"] > 0
    ms, emb = predictor.embed(img)
    np.testing.assert_allclose(emb, clip.embed_masks(img, ref.masks.masks), atol=1e-6)


def test_predict_batch_equals_per_image_predict(predictor):
    imgs = [make_scene(96, 128), make_scene(96, 128, variant=3), make_scene(80, 120, variant=1)]
    calls = {"n": 0, "batch": []}
    enc = predictor.mask_generator.backend.encode

    def counting(x):
        calls["n"] += 1
        calls["batch"].append(int(x.shape[0]))
        return enc(x)

    predictor.mask_generator.backend.encode = counting
    try:
        batch = predictor.predict_batch(imgs)
    finally:
        del predictor.mask_generator.backend.encode
    # one encoder call for the three full images; the crops of the crop layer (tuss preset) run one by one
    assert calls["batch"][0] == 3 and set(calls["batch"][1:]) <= {1} and len(calls["batch"]) > 1
    for img, b in zip(imgs, batch):
        one = predictor.predict(img)
        np.testing.assert_array_equal(b.masks.masks, one.masks.masks)
        np.testing.assert_allclose(b.scores, one.scores, atol=1e-4)
        np.testing.assert_array_equal(b.labels, one.labels)
        np.testing.assert_array_equal(b.label_map, one.label_map)
        assert b.timings["batch_size"] == 3


def test_embed_masks_batch_equals_embed_masks(models):
    _, clip = models
    imgs = [make_scene(96, 128), make_scene(150, 100, variant=2)]
    sets = [given_masks(96, 128).masks, given_masks(150, 100).masks[:2]]  # different M: padded with empty masks
    calls = []
    feats = clip.runner.features

    def counting(x, tm):
        calls.append(int(x.shape[0]))
        return feats(x, tm)

    clip.runner.features = counting
    try:
        got = clip.embed_masks_batch(imgs, sets)
    finally:
        del clip.runner.features
    n_single = 0
    for img, m, g in zip(imgs, sets, got):
        lay = clip.layout(img.shape[:2])
        n_single += int(lay.has_global) + len(lay.groups)
        np.testing.assert_allclose(g, clip.embed_masks(img, m), rtol=1e-4, atol=1e-5)
    assert len(calls) < n_single  # the window passes of both images ran together


def test_per_request_classes_and_glcc_cannot_override(models, predictor):
    img = make_scene(96, 128)
    seg = predictor.predict(img, masks=given_masks(96, 128), classes=["person", "car"])
    assert seg.class_names == ("background", "person", "car")
    ref = OVSegmenter(None, models[1], classes=["person", "car"]).segment(img, given_masks(96, 128))
    np.testing.assert_allclose(seg.scores, ref.scores, atol=1e-6)
    with pytest.raises(InputError, match="masks are for"):
        predictor.predict(img, masks=given_masks(50, 60))


def _fitted_glcc(clip: DBAClip, provenance: dict | None) -> GLCC:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, clip.embed_dim)).astype(np.float32)
    img = np.repeat(np.arange(12), 5)
    gt = rng.dirichlet(np.ones(3), size=60).astype(np.float32)
    g = GLCC(GLCCConfig(k=5), class_names=["background", "a", "b"])
    g.fit(X, None, img, "full", gt_fractions=gt)
    g.provenance = provenance
    return g


def test_glcc_classifier_and_provenance_refusal(models, tmp_path):
    gen, clip = models
    p0 = Predictor(gen, clip, TextClassifier(clip, classes=CLASSES))
    ident = p0.identity()
    g = _fitted_glcc(clip, dict(ident))
    g.save(tmp_path / "g")
    loaded = GLCC.load(tmp_path / "g")
    assert loaded.provenance == ident  # saved and read back
    pr = Predictor(gen, clip, GLCCClassifier(loaded))
    img = make_scene(96, 128)
    seg = pr.predict(img, masks=given_masks(96, 128))
    ref = loaded.predict(clip.embed_masks(img, given_masks(96, 128).masks))
    np.testing.assert_allclose(seg.scores, ref, atol=1e-6)
    np.testing.assert_array_equal(seg.labels, ref.argmax(1))
    assert seg.class_names == ("background", "a", "b")
    for field, value in (("clip_weights", "0" * 64), ("clip_preset", "paper"), ("clip_model", "ViT-B-16")):
        bad = _fitted_glcc(clip, {**ident, field: value})
        with pytest.raises(ProvenanceError, match=field):
            Predictor(gen, clip, GLCCClassifier(bad))
    with pytest.raises(ProvenanceError, match="records no embedder identity"):
        Predictor(gen, clip, GLCCClassifier(_fitted_glcc(clip, None)))
    with pytest.raises(InputError, match="classes= overrides"):
        pr.predict(img, classes="x,y")


def test_concurrent_predicts_match_sequential(predictor):
    imgs = [make_scene(96, 128, variant=v) for v in range(4)]
    seq = [predictor.predict(im).label_map for im in imgs]
    out: list = [None] * 4
    errors: list = []

    def work(i):
        try:
            out[i] = predictor.predict(imgs[i]).label_map
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    for a, b in zip(seq, out):
        np.testing.assert_array_equal(a, b)
