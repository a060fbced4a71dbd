"""OVSegmenter against a naive numpy re-computation of docs/reference-code.md §4-5 (tiny DBA-CLIP, random weights).

The reference embeds the masks with tests/naive_dbaclip.py (docs/reference-code.md §2-3 step by step, independent of
tusss.clip) and the class names with open_clip's own tokenizer and ``encode_text``; scoring and painting are
re-done in numpy.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from naive_dbaclip import naive_embed_masks

from tusss.clip.model import DBAClip
from tusss.clip.templates import get_templates
from tusss.clip.vocabularies import get_vocabulary
from tusss.errors import InputError
from tusss.masks.maskset import MaskSet
from tusss.pipeline import OVSegmenter, resolve_class_set

H, W = 24, 32


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    # small GSW layout keeps the test fast; the code path is the reference one
    return DBAClip.from_pretrained("tusss-tiny", weights=None, target_size=64, window_sizes=(32,), stride_divisor=1)


@pytest.fixture(scope="module")
def image_and_masks():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
    m = np.zeros((4, H, W), bool)
    m[0, :, :] = True  # level 0 everywhere
    m[1, :12, :20] = True  # level 2
    m[2, 8:, 10:] = True  # level 2, overlaps mask 1
    m[3, 20:, :5] = True  # level 1
    m[0, 0, 31] = False  # a pixel no mask covers -> fill
    ms = MaskSet(m, level=[0, 2, 2, 1], predicted_iou=rng.random(4), stability=rng.random(4))
    return img, ms


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


_EMB: dict[int, np.ndarray] = {}


def _naive_text(clip, names, templates) -> np.ndarray:
    """open_clip's encode_text per (template, name); L2-normalise, mean over templates, L2-normalise."""
    import open_clip

    tmpl = list(get_templates(templates))  # the template strings (data) of the set
    tok = open_clip.get_tokenizer("tusss-tiny")
    with torch.no_grad():
        out = []
        for n in names:
            f = clip.model.encode_text(tok([t.format(n) for t in tmpl])).double().numpy()
            f = (f / np.linalg.norm(f, axis=1, keepdims=True)).mean(0)
            out.append(f / np.linalg.norm(f))
    return np.stack(out)


def _naive_logits(clip, img, ms, names, templates):
    key = id(ms)
    if key not in _EMB:  # each MaskSet is embedded once for all tests (the naive path is slow)
        _EMB[key] = (ms, naive_embed_masks(clip.model, img, ms.masks, clip.cfg))
    e = _EMB[key][1].astype(np.float64)
    t = _naive_text(clip, names, templates)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    return 100.0 * e @ t.T


def _naive_paint(masks, labels, level, conf, fill):
    M = len(labels)
    out = np.full(masks.shape[1:], fill, np.int64)
    for y in range(masks.shape[1]):
        for x in range(masks.shape[2]):
            cover = [k for k in range(M) if masks[k, y, x]]
            if cover:
                out[y, x] = labels[max(cover, key=lambda k: (level[k], conf[k], k))]
    return out


def _check(seg, ms, scores, fill=0):
    labels = scores.argmax(1)
    conf = scores.max(1)
    np.testing.assert_allclose(seg.scores, scores, rtol=2e-4, atol=1e-6)
    assert seg.labels.tolist() == labels.tolist()
    np.testing.assert_allclose(seg.conf, conf, rtol=2e-4, atol=1e-6)
    np.testing.assert_array_equal(seg.label_map, _naive_paint(ms.masks, labels, ms.level, conf, fill))
    assert seg.label_map.dtype == np.uint8 and seg.label_map.shape == (H, W)


def test_voc21_explicit_background_alpha(clip, image_and_masks):
    img, ms = image_and_masks
    voc = get_vocabulary("voc21")
    seg = OVSegmenter(None, clip, vocabulary="voc21", bg_alpha=0.5).segment(img, ms)
    s = _softmax(_naive_logits(clip, img, ms, voc.names, "origami"))  # softmax over all 21
    s[:, 0] = s[:, 0] ** 0.5  # bg^alpha
    _check(seg, ms, s)
    assert seg.class_names[0] == "background" and len(seg.class_names) == 21
    assert seg.label_map[0, 31] == 0  # uncovered pixel -> fill
    js = seg.to_json()
    assert js["num_masks"] == 4 and js["masks"][1]["class"] == seg.class_names[seg.labels[1]]
    assert len(js["masks"][0]["scores"]) == 21


def test_dustbin_vocabulary_pow_background(clip, image_and_masks):
    img, ms = image_and_masks
    voc = get_vocabulary("voc")
    seg = OVSegmenter(None, clip, vocabulary="voc", templates="origami", bg_pow=2.0).segment(img, ms)
    p = _softmax(_naive_logits(clip, img, ms, voc.names, "origami"))  # 20 fg + 25 dustbins compete
    fg = p[:, :20]
    s = np.concatenate([(1 - fg.max(1, keepdims=True)) ** 2, fg], 1)
    _check(seg, ms, s)
    assert seg.scores.shape == (4, 21)


def test_no_background_vocabulary_and_custom_lists(clip, image_and_masks):
    img, ms = image_and_masks
    cs = get_vocabulary("cityscapes")
    seg = OVSegmenter(None, clip, vocabulary="cityscapes", templates="origami", fill=3).segment(img, ms)
    _check(seg, ms, _softmax(_naive_logits(clip, img, ms, cs.names, "origami")), fill=3)
    # custom list: explicit 'background' prepended by default
    seg = OVSegmenter(None, clip, classes="cat, dog", templates="a photo of a {}.").segment(img, ms)
    assert seg.class_names == ("background", "cat", "dog")
    _check(seg, ms, _softmax(_naive_logits(clip, img, ms, ["background", "cat", "dog"], ["a photo of a {}."])))
    seg = OVSegmenter(None, clip, classes=["cat", "dog"], background=False, templates="origami").segment(img, ms)
    assert seg.class_names == ("cat", "dog")
    _check(seg, ms, _softmax(_naive_logits(clip, img, ms, ["cat", "dog"], "origami")))
    assert resolve_class_set(classes=["background", "cat"]).names == ("background", "cat")


def test_zero_masks_and_empty_masks(clip, image_and_masks):
    img, ms = image_and_masks
    seg_ = OVSegmenter(None, clip, classes="cat,dog")
    with pytest.warns(UserWarning, match="no masks"):
        seg = seg_.segment(img, MaskSet.empty((H, W)))
    assert (seg.label_map == 0).all() and seg.scores.shape == (0, 3) and len(seg.labels) == 0
    m = np.concatenate([ms.masks[:2], np.zeros((1, H, W), bool)])
    with pytest.warns(UserWarning, match="dropping 1 empty"):
        seg = seg_.segment(img, MaskSet(m, level=[0, 2, 1], predicted_iou=np.ones(3), stability=np.ones(3)))
    assert len(seg.labels) == 2


def test_pipeline_input_errors(clip, image_and_masks):
    img, ms = image_and_masks
    with pytest.raises(InputError, match="unknown vocabulary 'voc99'"):
        OVSegmenter(None, clip, vocabulary="voc99")
    with pytest.raises(InputError, match="exactly one"):
        OVSegmenter(None, clip)
    with pytest.raises(InputError, match="exactly one"):
        OVSegmenter(None, clip, vocabulary="voc21", classes="cat")
    with pytest.raises(InputError, match="first"):
        OVSegmenter(None, clip, classes="cat,background")
    with pytest.raises(InputError, match="duplicate"):
        OVSegmenter(None, clip, classes="cat,cat")
    seg_ = OVSegmenter(None, clip, vocabulary="coco_object")  # '_' accepted for '-'
    assert seg_.num_classes == 81
    with pytest.raises(InputError, match="image"):
        seg_.segment(img[:10], ms)
    with pytest.raises(InputError, match="no mask_generator"):
        seg_.segment(img)
    with pytest.raises(InputError, match="uint8"):
        seg_.segment(img.astype(np.float32), ms)


def test_segment_with_sam_generator(clip):
    from tusss.masks.generator import MaskGenerator

    torch.manual_seed(1)
    gen = MaskGenerator.from_pretrained("vit_tiny", checkpoint=None, preset="tuss", points_per_side=3,
                                        crop_n_layers=0, pred_iou_thresh=-10.0, stability_score_thresh=-10.0,
                                        min_mask_region_area=0, box_nms_thresh=1.0,
                                        rock_sand_water_thresh=None)  # fmt: skip
    img = np.random.default_rng(3).integers(0, 256, (H, W, 3)).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = OVSegmenter(gen, clip, vocabulary="voc20").segment(img)
    ms = seg.masks
    assert ms.image_hw == (H, W) and (ms.area > 0).all()
    assert seg.scores.shape == (len(ms), 20) and len(ms) > 10
    v = get_vocabulary("voc20")
    _check(seg, ms, _softmax(_naive_logits(clip, img, ms, v.names, "origami")))


def test_from_pretrained_random_weights():
    torch.manual_seed(2)
    seg = OVSegmenter.from_pretrained(sam="vit_tiny", sam_checkpoint=None, clip_model="tusss-tiny",
                                      clip_weights=None, classes="cat,dog", mask_overrides={"points_per_side": 2},
                                      clip_overrides={"target_size": 64})  # fmt: skip
    assert seg.mask_generator.config.points_per_side == 2 and seg.clip.cfg.target_size == 64
    assert seg.class_names == ("background", "cat", "dog")
    with pytest.raises(InputError, match="unknown vocabulary"):
        OVSegmenter.from_pretrained(sam="vit_tiny", sam_checkpoint=None, vocabulary="nope")
