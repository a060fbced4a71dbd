"""Predictor.from_engine: the engine's graphs really run (decoder included) and give the labels and scores of the
same weights in eager PyTorch (backend="torch") on given masks, within the engine check's thresholds."""

from __future__ import annotations

import numpy as np
import pytest
from _engine_helpers import tiny_engine_dir

from tusss.engine.bench import synthetic_images
from tusss.engine.check import compare
from tusss.masks.maskset import MaskSet, masks_to_xywh
from tusss.predictor import Predictor


def given(h: int, w: int) -> MaskSet:
    m = np.zeros((3, h, w), bool)
    m[0, : h // 2] = True
    m[1, h // 2:, : w // 3] = True
    m[2, h // 2:, w // 3:] = True
    return MaskSet(masks=m, level=np.array([2, 1, 0], np.int8), predicted_iou=np.full(3, 0.9, np.float32),
                   stability=np.full(3, 0.95, np.float32), area=m.reshape(3, -1).sum(1), bbox=masks_to_xywh(m))


@pytest.fixture(scope="module")
def pair():
    d = tiny_engine_dir()
    opts = {"pred_iou_thresh": -100.0, "stability_score_thresh": 0.0, "points_per_side": 4, "crop_n_layers": 0}
    eng = Predictor.from_engine(d, classes="cat,dog,sofa", mask_options=opts)
    ref = Predictor.from_engine(d, classes="cat,dog,sofa", backend="torch", mask_options=opts)
    return eng, ref


def test_engine_and_torch_backends_agree_on_given_masks(pair):
    eng, ref = pair
    assert eng.backend == "onnxruntime" and ref.backend == "torch" and ref.engine is None
    img = synthetic_images(1, (120, 160), seed=5)[0]
    a, b = eng.predict(img, masks=given(120, 160)), ref.predict(img, masks=given(120, 160))
    assert compare(__import__("torch").from_numpy(a.scores), __import__("torch").from_numpy(b.scores))["rel"] < 1e-3
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.label_map, b.label_map)
    assert eng.engine.calls["clip_windows"] > 0 and eng.engine.calls["clip_text"] > 0


def test_engine_predictor_generates_with_the_decoder_graph(pair):
    eng, ref = pair
    before = dict(eng.engine.calls)
    img = synthetic_images(1, (96, 128), seed=6)[0]
    seg = eng.predict(img)
    assert eng.engine.calls["sam_encoder"] > before.get("sam_encoder", 0)
    assert eng.engine.calls["sam_decoder"] > before.get("sam_decoder", 0)
    assert len(seg.masks) > 0 and seg.label_map.shape == (96, 128)
    info = eng.info()
    assert info["backend"] == "onnxruntime" and info["precision"] == "fp32" and "CPUExecutionProvider" in \
        info["providers"] and info["sam"]["backend"]["name"] == "onnxruntime"
    assert eng.mask_generator.config_hash != ref.mask_generator.config_hash  # cache key carries the backend
