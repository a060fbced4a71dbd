"""MaskGenerator (docs/reference-code.md §1) against segment_anything's own generator and an independent naive pipeline.

The SAM network is the real tiny architecture with its encoder/decoder swapped for the scene-reading fakes
of ``_sam_fakes`` (deterministic, realistic candidates); SAM's pre/post-processing runs unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _sam_fakes import install_fakes, make_scene
from scipy import ndimage
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.utils.amg import build_all_layer_point_grids, generate_crop_boxes

from tusss.errors import CorruptFileError, InputError, WeightsNotFoundError
from tusss.masks import MaskGenerator, MaskSet, preset_config
from tusss.masks.sam_registry import SAM_MODELS, build_sam

# ----------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def fake_gen() -> MaskGenerator:
    torch.manual_seed(0)
    gen = MaskGenerator.from_pretrained("vit_tiny", checkpoint=None, preset="tuss")
    install_fakes(gen.sam)
    return gen


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return make_scene()


def with_config(gen: MaskGenerator, preset: str, **ov) -> MaskGenerator:
    return MaskGenerator(gen.sam, preset_config(preset, **ov), model_type=gen.model_type)


def assert_same_as_sam(ms: MaskSet, anns: list[dict]) -> None:
    assert len(ms) == len(anns)
    for i, a in enumerate(anns):
        np.testing.assert_array_equal(ms.masks[i], a["segmentation"], err_msg=f"mask {i}")
        assert ms.area[i] == a["area"]
        assert ms.bbox[i].tolist() == [int(v) for v in a["bbox"]]
        assert ms.crop_box[i].tolist() == [int(v) for v in a["crop_box"]]
        assert ms.predicted_iou[i] == np.float32(a["predicted_iou"])
        assert ms.stability[i] == np.float32(a["stability_score"])
        np.testing.assert_allclose(ms.point_coords[i], np.asarray(a["point_coords"][0], np.float32))


def _box(m: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        return np.zeros(4, np.float32)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)


def naive_nms(boxes: list[np.ndarray], scores: np.ndarray, thr: float) -> list[int]:
    """Greedy NMS in float32 like torchvision's kernel: highest score first, ties by index (torchvision's
    order below 1000 boxes); suppress IoU > thr."""
    f = np.float32
    bx = np.asarray(boxes, f).reshape(-1, 4)
    area = (bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1])
    alive = np.ones(len(bx), bool)
    keep: list[int] = []
    for i in np.argsort(-np.asarray(scores, f), kind="stable"):
        if not alive[i]:
            continue
        keep.append(int(i))
        w = np.maximum(f(0), np.minimum(bx[i, 2], bx[:, 2]) - np.maximum(bx[i, 0], bx[:, 0]))
        h = np.maximum(f(0), np.minimum(bx[i, 3], bx[:, 3]) - np.maximum(bx[i, 1], bx[:, 1]))
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (area[i] + area - inter)
        alive &= ~(iou > thr)
        alive[i] = False
    return keep


def naive_remove_small(mask: np.ndarray, area: int, mode: str) -> tuple[np.ndarray, bool]:
    work = ~mask if mode == "holes" else mask
    lab, n = ndimage.label(work, structure=np.ones((3, 3)))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    small = [i + 1 for i in range(n) if sizes[i] < area]
    if not small:
        return mask, False
    if mode == "holes":
        return mask | np.isin(lab, small), True
    big = [i + 1 for i in range(n) if sizes[i] >= area] or [int(np.argmax(sizes)) + 1]
    return np.isin(lab, big), True


def naive_rsw(masks: np.ndarray, level: np.ndarray, thr: float) -> list[int]:
    container = [i for i in range(len(masks)) if level[i] == 2]
    for lvl in (1, 0):
        cand = [i for i in range(len(masks)) if level[i] == lvl]
        if not container:
            container += cand
            continue
        kept = []
        for i in cand:
            a = masks[i].sum()
            rec = max((masks[i] & masks[c]).sum() / a if a else np.nan for c in container)
            if rec < thr:
                kept.append(i)
        container += kept
    return container


def naive_pipeline(sam, image: np.ndarray, cfg) -> dict[str, np.ndarray]:
    """Reference §1 written out per candidate with numpy loops, from the raw SAM outputs."""
    f32 = np.float32
    H, W = image.shape[:2]
    crop_boxes, layers = generate_crop_boxes((H, W), cfg.crop_n_layers, cfg.crop_overlap_ratio)
    grids = build_all_layer_point_grids(cfg.points_per_side, cfg.crop_n_layers, cfg.crop_n_points_downscale_factor)
    pred = SamPredictor(sam)
    allc: list[dict] = []
    for crop, layer in zip(crop_boxes, layers):
        x0, y0, x1, y1 = crop
        im = image[y0:y1, x0:x1]
        pred.set_image(im)
        pts = grids[layer] * np.array(im.shape[:2])[None, ::-1]
        tp = torch.as_tensor(pred.transform.apply_coords(pts, im.shape[:2]))
        with torch.no_grad():  # all points in one call: batching must not matter
            logits, ious, _ = pred.predict_torch(tp[:, None], torch.ones(len(pts), 1), return_logits=True)
        logits, ious = logits.numpy(), ious.numpy()
        cands = []
        for p in range(len(pts)):
            for lvl in range(3):
                iou = ious[p, lvl]
                thr_score = f32(iou + f32(cfg.score_thresh_offset[lvl]))
                if cfg.pred_iou_thresh > 0 and not thr_score > f32(cfg.pred_iou_thresh):
                    continue
                lg = logits[p, lvl]
                off = cfg.stability_score_offset
                with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 for empty masks, as in SAM
                    stab = f32((lg > off).sum()) / f32((lg > -off).sum())
                if cfg.stability_score_thresh > 0 and not (
                    f32(stab + f32(cfg.stability_score_bias[lvl])) >= f32(cfg.stability_score_thresh)
                ):
                    continue
                m = lg > 0.0
                box = _box(m)
                ob = box + np.array([x0, y0, x0, y0], np.float32)
                near_crop = np.abs(ob - np.array(crop, np.float32)) <= 20
                near_img = np.abs(ob - np.array([0, 0, W, H], np.float32)) <= 20
                if (near_crop & ~near_img).any():
                    continue
                full = np.zeros((H, W), bool)
                full[y0:y1, x0:x1] = m
                cands.append(
                    dict(
                        mask=full,
                        box=box,
                        obox=ob,
                        iou=f32(iou),
                        stab=f32(stab),
                        level=lvl,
                        point=pts[p] + [x0, y0],
                        crop=np.array(crop),
                    )
                )
        nms_scores = np.array([f32(c["iou"] + f32(cfg.score_nms_offset[c["level"]])) for c in cands], np.float32)
        allc += [cands[i] for i in naive_nms([c["box"] for c in cands], nms_scores, cfg.box_nms_thresh)]
    if len(crop_boxes) > 1:
        sc = np.array([f32(1) / f32((c["crop"][2] - c["crop"][0]) * (c["crop"][3] - c["crop"][1])) for c in allc])
        allc = [allc[i] for i in naive_nms([c["obox"] for c in allc], sc, cfg.crop_nms_thresh)]
    if cfg.min_mask_region_area > 0 and allc:
        sc = []
        for c in allc:
            m, ch1 = naive_remove_small(c["mask"], cfg.min_mask_region_area, "holes")
            m, ch2 = naive_remove_small(m, cfg.min_mask_region_area, "islands")
            c["mask"], c["obox"] = m, _box(m)
            sc.append(float(not (ch1 or ch2)))
        allc = [
            allc[i]
            for i in naive_nms([c["obox"] for c in allc], np.array(sc), max(cfg.box_nms_thresh, cfg.crop_nms_thresh))
        ]
    if cfg.rock_sand_water_thresh is not None and allc:
        keep = naive_rsw(
            np.stack([c["mask"] for c in allc]), np.array([c["level"] for c in allc]), cfg.rock_sand_water_thresh
        )
        allc = [allc[i] for i in keep]
    out = {k: np.array([c[k] for c in allc]) for k in ("iou", "stab", "level", "point", "obox")}
    out["masks"] = np.stack([c["mask"] for c in allc]) if allc else np.zeros((0, H, W), bool)
    return out


def assert_same_as_naive(ms: MaskSet, ref: dict[str, np.ndarray]) -> None:
    assert len(ms) == len(ref["masks"]), (ms.level.tolist(), ref["level"].tolist())
    np.testing.assert_array_equal(ms.level, ref["level"])
    np.testing.assert_array_equal(ms.masks, ref["masks"])
    np.testing.assert_array_equal(ms.predicted_iou, ref["iou"])
    np.testing.assert_array_equal(ms.stability, ref["stab"])
    np.testing.assert_allclose(ms.point_coords, ref["point"], rtol=1e-6)
    ob = ref["obox"].astype(np.int64)
    np.testing.assert_array_equal(ms.bbox, np.c_[ob[:, :2], ob[:, 2:] - ob[:, :2]])


# tuss pattern scaled down to a 256 x 192 scene (12 points per side, 6 in the 2 x 2 crops)
SMALL = dict(points_per_side=12, points_per_batch=50)

NO_RSW = dict(rock_sand_water_thresh=None)
CASES = {  # name -> (overrides of the tuss preset, checked against the naive pipeline?)
    "tuss": ({}, True),
    "no_rsw": (NO_RSW, False),
    "no_thr_offset": (dict(NO_RSW, score_thresh_offset=(0, 0, 0)), False),
    "no_nms_offset": (dict(NO_RSW, score_nms_offset=(0, 0, 0)), False),
    "no_offsets_chunked": (
        dict(score_thresh_offset=(0, 0, 0), score_nms_offset=(0, 0, 0), rock_sand_water_chunk_size=2),
        True,
    ),
    "stab_bias": (dict(NO_RSW, stability_score_bias=(0.0, 0.0, 0.08)), True),
    "no_crops_no_post": (dict(NO_RSW, crop_n_layers=0, min_mask_region_area=0), True),
    "no_post": (dict(NO_RSW, min_mask_region_area=0), False),
}
_RESULTS: dict[str, MaskSet] = {}


def run_case(gen: MaskGenerator, img: np.ndarray, name: str) -> MaskSet:
    """Generator output for a case, computed once per session (the scene and fake are deterministic)."""
    if name not in _RESULTS:
        _RESULTS[name] = with_config(gen, "tuss", **SMALL, **CASES[name][0]).generate(img)
    return _RESULTS[name]


# ----------------------------------------------------------------------------------------------- sam preset


def test_sam_preset_equals_segment_anything_on_scene(fake_gen: MaskGenerator) -> None:
    img = make_scene(variant=3)
    ov = dict(points_per_side=8, crop_n_layers=1, min_mask_region_area=100)
    gen = with_config(fake_gen, "sam", **ov)
    ms = gen.generate(img)
    ref = SamAutomaticMaskGenerator(fake_gen.sam, **gen.config.sam_kwargs()).generate(img)
    assert len(ref) >= 6  # the scene gives a realistic number of masks
    assert_same_as_sam(ms, ref)
    assert set(ms.level.tolist()) <= {0, 1, 2}


def test_sam_preset_equals_segment_anything_random_weights() -> None:
    """Real (random-weight) tiny SAM network, thresholds at 0 so that noise masks get through."""
    torch.manual_seed(2)
    gen = MaskGenerator.from_pretrained(
        "vit_tiny",
        None,
        preset="sam",
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        min_mask_region_area=20,
        box_nms_thresh=0.99,
    )
    rng = np.random.default_rng(0)
    img = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    ms = gen.generate(img)
    ref = SamAutomaticMaskGenerator(gen.sam, **gen.config.sam_kwargs()).generate(img)
    assert len(ref) > 0
    assert_same_as_sam(ms, ref)


# ----------------------------------------------------------------------------------------------- tuss preset


@pytest.mark.parametrize("case", [k for k, (_, naive) in CASES.items() if naive])
def test_tuss_matches_naive_pipeline(fake_gen: MaskGenerator, scene: np.ndarray, case: str) -> None:
    ms = run_case(fake_gen, scene, case)
    ref = naive_pipeline(fake_gen.sam, scene, preset_config("tuss", **SMALL, **CASES[case][0]))
    assert_same_as_naive(ms, ref)


def _same(a: MaskSet, b: MaskSet) -> bool:
    return len(a) == len(b) and bool((a.masks == b.masks).all()) and bool((a.level == b.level).all())


def test_each_tuss_step_changes_the_scene_result(fake_gen: MaskGenerator, scene: np.ndarray) -> None:
    """The scene exercises every step, so the naive comparisons above can fail."""
    r = {k: run_case(fake_gen, scene, k) for k in CASES}
    base = r["no_rsw"]
    # level threshold offset: object 1's whole mask (raw IoU 0.80) only passes with +0.1
    assert (base.level == 2).sum() > (r["no_thr_offset"].level == 2).sum()
    # level NMS offset: whole masks beat parts with overlapping boxes
    assert not _same(base, r["no_nms_offset"])
    # stability bias revives object 2's unstable whole mask
    assert (r["stab_bias"].level == 2).sum() > (base.level == 2).sum()
    # cross-crop NMS and the small-region post-processing change the output
    assert not _same(base, r["no_post"])
    assert not _same(r["no_post"], r["no_crops_no_post"])
    assert (base.crop_box != np.array([0, 0, 256, 192])).any(axis=1).any()  # some masks come from crops
    # RSW removes nested masks, in TUSS's order (level 2, then kept 1, then kept 0)
    rsw = r["tuss"]
    assert 0 < len(rsw) < len(base)
    assert list(rsw.level) == sorted(rsw.level, reverse=True)
    assert set(rsw.level.tolist()) == {0, 1, 2}


def test_rsw_invariant_real_network() -> None:
    """Random-weight tiny SAM, tuss preset with thresholds off: kept masks satisfy the RSW property."""
    torch.manual_seed(2)
    gen = MaskGenerator.from_pretrained(
        "vit_tiny",
        None,
        preset="tuss",
        points_per_side=8,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        crop_n_layers=0,
        min_mask_region_area=0,
        box_nms_thresh=0.95,
    )
    rng = np.random.default_rng(1)
    img = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    ms = gen.generate(img)
    assert len(ms) > 0
    m = ms.masks.reshape(len(ms), -1)
    for i in range(len(ms)):
        if ms.level[i] == 2:
            continue
        before = [j for j in range(i) if ms.level[j] > ms.level[i]]
        if not before:
            continue
        rec = max((m[i] & m[j]).sum() / m[i].sum() for j in before)
        assert rec < 0.3


def test_generate_fields_and_offsets_not_in_predicted_iou(fake_gen: MaskGenerator, scene: np.ndarray) -> None:
    ms = run_case(fake_gen, scene, "tuss")
    assert ms.masks.dtype == np.bool_ and ms.masks.shape[1:] == scene.shape[:2]
    assert ms.level.dtype == np.int8 and ms.predicted_iou.dtype == np.float32
    assert (ms.predicted_iou < 1.0).all()  # +1.0 NMS offset / +0.1 threshold offset not stored
    np.testing.assert_array_equal(ms.area, ms.masks.reshape(len(ms), -1).sum(1))
    assert ms.masks.reshape(len(ms), -1).any(1).all()


def test_empty_result_is_empty_maskset(fake_gen: MaskGenerator) -> None:
    gen = with_config(fake_gen, "tuss", points_per_side=4, pred_iou_thresh=1.5)  # nothing can pass
    ms = gen.generate(make_scene())
    assert len(ms) == 0 and ms.image_hw == (192, 256)


# ----------------------------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((32, 32, 3), np.float32),
        np.zeros((32, 32), np.uint8),
        np.zeros((32, 32, 4), np.uint8),
        np.zeros((0, 32, 3), np.uint8),
        [[1, 2, 3]],
    ],
)
def test_bad_image(fake_gen: MaskGenerator, bad) -> None:
    with pytest.raises(InputError):
        fake_gen.generate(bad)


def test_unknown_model_type_preset_field() -> None:
    with pytest.raises(InputError, match="vit_x"):
        MaskGenerator.from_pretrained("vit_x", None)
    with pytest.raises(InputError, match="nope"):
        MaskGenerator.from_pretrained("vit_tiny", None, preset="nope")
    with pytest.raises(InputError, match="points_per_sid"):
        MaskGenerator.from_pretrained("vit_tiny", None, points_per_sid=3)
    with pytest.raises(InputError, match="no official checkpoint"):
        MaskGenerator.from_pretrained("vit_tiny", "official")


@pytest.mark.parametrize("model_type", ["vit_h", "vit_b"])
def test_missing_official_checkpoint(tmp_path, monkeypatch, model_type: str) -> None:
    monkeypatch.setenv("TUSSS_HOME", str(tmp_path))
    monkeypatch.setenv("TUSSS_OFFLINE", "1")
    fn = SAM_MODELS[model_type].filename
    with pytest.raises(WeightsNotFoundError) as ei:
        MaskGenerator.from_pretrained(model_type, "official")
    msg = str(ei.value)
    assert fn in msg
    assert "https://dl.fbaipublicfiles.com/segment_anything/" + fn in msg
    assert str(tmp_path / "sam" / fn) in msg


def test_missing_checkpoint_path(tmp_path) -> None:
    p = tmp_path / "nowhere.pth"
    with pytest.raises(WeightsNotFoundError, match="nowhere.pth"):
        MaskGenerator.from_pretrained("vit_b", p)


def test_checkpoint_path_round_trip_and_errors(tmp_path) -> None:
    torch.manual_seed(5)
    sam, _ = build_sam("vit_tiny", None)
    p = tmp_path / "tiny.pth"
    torch.save(sam.state_dict(), p)
    torch.manual_seed(6)  # another random init, overwritten by the file
    gen = MaskGenerator.from_pretrained("vit_tiny", p, preset="sam")
    for k, v in sam.state_dict().items():
        assert torch.equal(gen.sam.state_dict()[k], v), k
    assert gen.weights_id.startswith("file:tiny.pth:")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptFileError, match="bad.pth"):
        MaskGenerator.from_pretrained("vit_tiny", bad)
    other = tmp_path / "other.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(3)}, other)
    with pytest.raises(InputError, match="does not fit SAM vit_tiny"):
        MaskGenerator.from_pretrained("vit_tiny", other)


def test_random_weights_follow_torch_seed() -> None:
    torch.manual_seed(7)
    a = MaskGenerator.from_pretrained("vit_tiny", None)
    torch.manual_seed(7)
    b = MaskGenerator.from_pretrained("vit_tiny", None)
    assert a.weights_id == b.weights_id and a.config_hash == b.config_hash
    c = MaskGenerator.from_pretrained("vit_tiny", None)
    assert c.weights_id != a.weights_id


def test_vit_b_is_segment_anythings_architecture() -> None:
    """The one ViT-B build of the suite: same parameters as segment_anything's registry under the same seed."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    ours, wid = build_sam("vit_b", None)
    torch.manual_seed(0)
    ref = sam_model_registry["vit_b"]()
    sd_o, sd_r = ours.state_dict(), ref.state_dict()
    assert sd_o.keys() == sd_r.keys()
    assert all(torch.equal(sd_o[k], sd_r[k]) for k in sd_o)
    assert ours.image_encoder.img_size == 1024 and wid == ""


def test_fast_rle_equals_segment_anything() -> None:
    from segment_anything.utils.amg import mask_to_rle_pytorch

    from tusss.masks.generator import mask_to_rle_fast

    rng = np.random.default_rng(0)
    m = torch.from_numpy(rng.random((7, 9, 11)) < 0.5)
    m[0] = True
    m[1] = False
    m[2, 0, 0] = True
    m[3, 0, 0] = False
    assert mask_to_rle_fast(m) == mask_to_rle_pytorch(m)
    assert mask_to_rle_fast(m[:0]) == []
