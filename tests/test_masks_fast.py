"""Device AMG path (tusss.masks.amg_fast) against the reference path and segment_anything's own functions.

CPU, float32: the fast path must give the reference path's MaskSet bit for bit on the deterministic fake SAM;
its pieces (connected components, small-region removal, RLE) must equal scipy / segment_anything on random
masks. The CUDA tests (skipped without a GPU) state the GPU tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _sam_fakes import install_fakes, make_scene
from scipy import ndimage
from segment_anything.utils.amg import mask_to_rle_pytorch, remove_small_regions

from tusss.errors import InputError
from tusss.masks import MaskGenerator, MaskSet, preset_config
from tusss.masks.amg_fast import (
    FastLevelMaskGenerator,
    label_components,
    remove_small_regions_batched,
    rle_counts_device,
    rle_dicts,
)
from tusss.masks.generator import mask_data_to_maskset

FIELDS = ("masks", "level", "predicted_iou", "stability", "area", "bbox", "crop_box", "point_coords")
SMALL = dict(points_per_side=12, points_per_batch=50)


@pytest.fixture(scope="module")
def fake_sam():
    torch.manual_seed(0)
    gen = MaskGenerator.from_pretrained("vit_tiny", checkpoint=None, preset="tuss")
    return install_fakes(gen.sam)


def _assert_equal_masksets(a: MaskSet, b: MaskSet) -> None:
    assert len(a) == len(b)
    for k in FIELDS:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)


CASES = {
    "tuss": {},
    "no_rsw": dict(rock_sand_water_thresh=None),
    "no_offsets_chunked_big_batch": dict(score_thresh_offset=(0, 0, 0), score_nms_offset=(0, 0, 0),
                                         rock_sand_water_chunk_size=2, points_per_batch=1024),
    "stab_bias": dict(rock_sand_water_thresh=None, stability_score_bias=(0.0, 0.0, 0.08)),
    "no_crops_no_post": dict(crop_n_layers=0, min_mask_region_area=0),
    "big_min_area": dict(min_mask_region_area=400, points_per_batch=7),
    "two_crop_layers": dict(crop_n_layers=2, points_per_side=8, rock_sand_water_thresh=None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_equals_reference_on_fake_sam(fake_sam, case: str) -> None:
    img = make_scene(variant=1 if case == "big_min_area" else 0)
    cfg = preset_config("tuss", **{**SMALL, **CASES[case]})
    ref = MaskGenerator(fake_sam, cfg).generate(img)
    fast = FastLevelMaskGenerator(fake_sam, cfg)
    got = mask_data_to_maskset(fast.generate_mask_data(img), img.shape[:2])
    assert len(ref) >= 3  # the scene gives real candidates
    _assert_equal_masksets(ref, got)
    n_crops = sum(4**i for i in range(cfg.crop_n_layers + 1))
    assert fast.stats["encoder_calls"] == 1  # all crops in one encoder call
    assert fast.stats["decoder_calls"] >= n_crops


def test_small_region_step_equals_segment_anything(fake_sam) -> None:
    """Step 5 alone on random masks (many changed, one empty with a stale box): same masks, boxes and order as
    segment_anything's ``postprocess_small_regions``."""
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.utils.amg import MaskData, rle_to_mask

    m = torch.from_numpy(_random_masks(11, b=30, h=40, w=52))
    n = m.shape[0]
    boxes = torch.as_tensor(np.asarray([_np_box(x) for x in m.numpy()]), dtype=torch.int64)
    boxes[-3] = torch.tensor([5, 7, 5, 7])  # the empty mask: an uncropped [0,0,0,0] box, as the pipeline leaves it
    assert not m[-3].any()
    rng = np.random.default_rng(0)
    fields = dict(iou_preds=torch.from_numpy(rng.random(n).astype(np.float32)),
                  level=torch.from_numpy(rng.integers(0, 3, n)),
                  points=torch.from_numpy(rng.random((n, 2))),
                  stability_score=torch.from_numpy(rng.random(n).astype(np.float32)),
                  crop_boxes=torch.tensor([[0, 0, 52, 40]]).repeat(n, 1))
    ref = MaskData(rles=mask_to_rle_pytorch(m), boxes=boxes.clone(), **{k: v.clone() for k, v in fields.items()})
    ref.to_numpy()
    ref = SamAutomaticMaskGenerator.postprocess_small_regions(ref, 25, 0.7)
    fast = FastLevelMaskGenerator(fake_sam, preset_config("tuss", **SMALL), cc_chunk=7)
    got = fast._small_regions(dict(masks=m, boxes=boxes, **fields), 25, 0.7)
    assert 0 < len(ref["rles"]) < n
    np.testing.assert_array_equal(got["masks"].numpy(), np.stack([rle_to_mask(r) for r in ref["rles"]]))
    np.testing.assert_array_equal(got["boxes"].numpy(), ref["boxes"])
    np.testing.assert_array_equal(got["iou_preds"].numpy(), ref["iou_preds"])


def _np_box(m: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(m)
    return [0, 0, 0, 0] if ys.size == 0 else [xs.min(), ys.min(), xs.max(), ys.max()]


def test_fast_equals_reference_sam_preset_scene(fake_sam) -> None:
    img = make_scene(variant=3)
    cfg = preset_config("sam", points_per_side=8, crop_n_layers=1, min_mask_region_area=100)
    ref = MaskGenerator(fake_sam, cfg).generate(img)
    got = mask_data_to_maskset(FastLevelMaskGenerator(fake_sam, cfg).generate_mask_data(img), img.shape[:2])
    assert len(ref) >= 6
    _assert_equal_masksets(ref, got)


def test_fast_equals_reference_random_network() -> None:
    """Real random-weight tiny SAM: one crop per encoder call is bit-identical; all crops in one call equal up
    to float rounding of the batched encoder (same masks, IoU predictions within 1e-6)."""
    torch.manual_seed(2)
    gen = MaskGenerator.from_pretrained("vit_tiny", None, preset="tuss", points_per_side=6, pred_iou_thresh=0.0,
                                        stability_score_thresh=0.0, min_mask_region_area=20, box_nms_thresh=0.95,
                                        rock_sand_water_thresh=None)
    img = (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)
    ref = gen.generate(img)
    assert len(ref) > 0
    one = mask_data_to_maskset(FastLevelMaskGenerator(gen.sam, gen.config, encoder_batch=1).generate_mask_data(img),
                               img.shape[:2])
    _assert_equal_masksets(ref, one)
    allc = mask_data_to_maskset(FastLevelMaskGenerator(gen.sam, gen.config).generate_mask_data(img), img.shape[:2])
    assert len(allc) == len(ref)
    np.testing.assert_array_equal(allc.masks, ref.masks)
    np.testing.assert_allclose(allc.predicted_iou, ref.predicted_iou, atol=1e-6)


def test_mask_generator_hook_runs_fast_path(fake_sam) -> None:
    """``MaskGenerator(..., amg="fast")`` runs the fast path (its counters move) with the reference's output,
    also through ``generate_batch``; the cache key does not change."""
    cfg = preset_config("tuss", **SMALL)
    imgs = [make_scene(), make_scene(variant=2)]
    ref_gen = MaskGenerator(fake_sam, cfg)
    gen = MaskGenerator(fake_sam, cfg, amg="fast")
    assert isinstance(gen._amg, FastLevelMaskGenerator) and gen.config_hash == ref_gen.config_hash
    _assert_equal_masksets(ref_gen.generate(imgs[0]), gen.generate(imgs[0]))
    assert gen._amg.stats["encoder_calls"] == 1
    for r, g in zip(ref_gen.generate_batch(imgs), gen.generate_batch(imgs)):
        _assert_equal_masksets(r, g)
    assert gen._amg.stats["encoder_calls"] == 3  # crop 0 of both images came from the one batched call
    assert gen.with_backend(gen.backend).amg == "fast"
    with pytest.raises(InputError, match="amg"):
        MaskGenerator(fake_sam, cfg, amg="turbo")


def test_fast_empty_result(fake_sam) -> None:
    cfg = preset_config("tuss", points_per_side=4, pred_iou_thresh=1.5)
    got = mask_data_to_maskset(FastLevelMaskGenerator(fake_sam, cfg).generate_mask_data(make_scene()), (192, 256))
    assert len(got) == 0 and got.image_hw == (192, 256)


def test_bad_arguments(fake_sam) -> None:
    cfg = preset_config("tuss", **SMALL)
    with pytest.raises(InputError, match="encoder_batch"):
        FastLevelMaskGenerator(fake_sam, cfg, encoder_batch=-1)
    with pytest.raises(InputError, match="cc_chunk"):
        FastLevelMaskGenerator(fake_sam, cfg, cc_chunk=0)
    with pytest.raises(InputError, match="mode"):
        remove_small_regions_batched(torch.zeros(1, 4, 4, dtype=torch.bool), 3, "blobs")
    with pytest.raises(InputError, match="bool"):
        label_components(torch.zeros(1, 4, 4))
    with pytest.raises(InputError, match="bool"):
        rle_counts_device(torch.zeros(4, 4, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------- pieces


def _random_masks(seed: int, b: int = 24, h: int = 37, w: int = 45) -> np.ndarray:
    """Blobby random masks of mixed density (smoothed noise), plus thin snakes and edge cases."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(b):
        noise = ndimage.gaussian_filter(rng.random((h, w)), sigma=rng.uniform(0.6, 2.5))
        out.append(noise > np.quantile(noise, rng.uniform(0.2, 0.9)))
    snake = np.zeros((h, w), bool)
    snake[::4, :] = True
    snake[1::8, -1] = snake[2::8, -1] = snake[3::8, -1] = True
    snake[5::8, 0] = snake[6::8, 0] = snake[7::8, 0] = True  # one long serpentine component
    out += [snake, ~snake, np.zeros((h, w), bool), np.ones((h, w), bool)]
    diag = np.eye(h, w, dtype=bool) | np.eye(h, w, k=3, dtype=bool)  # 8-connected only diagonally
    out.append(diag)
    return np.stack(out)


def _same_partition(lab: np.ndarray, ref: np.ndarray) -> bool:
    fg = ref > 0
    if not np.array_equal(lab < lab.size, fg):
        return False
    pairs = np.unique(np.stack([lab[fg], ref[fg]], 1), axis=0)
    return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


@pytest.mark.parametrize("seed", [0, 1])
def test_label_components_equals_scipy(seed: int) -> None:
    m = _random_masks(seed)
    lab = label_components(torch.from_numpy(m)).numpy()
    h, w = m.shape[1:]
    for i in range(len(m)):
        ref, _ = ndimage.label(m[i], structure=np.ones((3, 3)))
        li = lab[i]
        assert _same_partition(np.where(m[i], li, h * w), ref), f"mask {i}"
        # label = row-major index of the component's first pixel
        for c in np.unique(li[m[i]]):
            assert np.flatnonzero((li == c).ravel())[0] == c


@pytest.mark.parametrize("area", [1, 5, 30, 200])
@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_remove_small_regions_equals_segment_anything(mode: str, area: int) -> None:
    m = _random_masks(7 + area)
    got, changed = remove_small_regions_batched(torch.from_numpy(m), area, mode)
    for i in range(len(m)):
        ref, ref_changed = remove_small_regions(m[i], area, mode)
        np.testing.assert_array_equal(got[i].numpy(), ref, err_msg=f"{mode} {area} mask {i}")
        assert bool(changed[i]) == ref_changed, f"{mode} {area} mask {i}"


def test_islands_all_small_keeps_largest_and_ties_follow_opencv() -> None:
    m = np.zeros((3, 12, 12), bool)
    m[0, 0:2, 0:2] = True  # 4 px
    m[0, 5:8, 5:8] = True  # 9 px: the largest, kept
    m[1, 0:2, 8:10] = True  # two tied 4-px islands: OpenCV's order decides
    m[1, 6:8, 0:2] = True
    m[2, 3:6, 3:6] = True  # one small island: kept, but "changed" as in segment_anything
    from collections import Counter

    stats: Counter = Counter()
    got, changed = remove_small_regions_batched(torch.from_numpy(m), 20, "islands", stats=stats)
    for i in range(3):
        ref, ref_changed = remove_small_regions(m[i], 20, "islands")
        np.testing.assert_array_equal(got[i].numpy(), ref)
        assert bool(changed[i]) == ref_changed
    assert stats["cc_host_fallbacks"] == 1
    assert got[0].sum() == 9


def test_rle_equals_segment_anything() -> None:
    rng = np.random.default_rng(0)
    m = torch.from_numpy(rng.random((9, 7, 11)) < 0.5)
    m[0] = True
    m[1] = False
    m[2, 0, 0] = True
    m[3, 0, 0] = False
    m[4] = torch.from_numpy(_random_masks(3, b=1, h=7, w=11)[0])
    assert rle_dicts(m) == mask_to_rle_pytorch(m)
    assert rle_dicts(m[:0]) == []
    counts, offsets = rle_counts_device(m)
    assert int(offsets[-1]) == counts.numel() and (counts[offsets[1:] - 1] >= 0).all()
    assert all(int(counts[offsets[i] : offsets[i + 1]].sum()) == 77 for i in range(len(m)))


# ----------------------------------------------------------------------------------------------- CUDA

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


class _OnDevice(torch.nn.Module):
    """Runs a CPU fake module (kept out of the module tree, so ``sam.to("cuda")`` leaves it on the CPU) and returns
    its outputs on ``device``."""

    def __init__(self, inner: torch.nn.Module, device: str) -> None:
        super().__init__()
        self.__dict__["inner"] = inner
        self.device = device

    def forward(self, *args, **kw):
        out = self.inner(*_to(list(args), "cpu"), **{k: _to(v, "cpu") for k, v in kw.items()})
        return _to(out, self.device)

    def get_dense_pe(self):
        return self.inner.get_dense_pe().to(self.device)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    u = (a | b).sum()
    return float((a & b).sum() / u) if u else 1.0


#: GPU tolerance of the fast path against the CPU reference (bilinear up-sampling and NMS run in other kernels):
#: same number of masks, and every reference mask matched by a fast mask of the same level with mask IoU >= 0.98.
GPU_MASK_IOU_TOL = 0.98


@pytest.mark.cuda
@cuda
def test_fast_on_gpu_matches_cpu_reference() -> None:
    torch.manual_seed(0)
    gen = MaskGenerator.from_pretrained("vit_tiny", checkpoint=None, preset="tuss")
    sam = install_fakes(gen.sam)
    img = make_scene()
    cfg = preset_config("tuss", **SMALL)
    ref = MaskGenerator(sam, cfg).generate(img)
    sam.prompt_encoder = _OnDevice(sam.prompt_encoder, "cuda")
    sam.mask_decoder = _OnDevice(sam.mask_decoder, "cuda")
    sam_gpu = sam.to("cuda")
    assert sam_gpu.device.type == "cuda"
    got = mask_data_to_maskset(FastLevelMaskGenerator(sam_gpu, cfg).generate_mask_data(img), img.shape[:2])
    assert len(got) == len(ref)
    for i in range(len(ref)):
        best = max(_mask_iou(ref.masks[i], got.masks[j]) for j in range(len(got)) if got.level[j] == ref.level[i])
        assert best >= GPU_MASK_IOU_TOL, f"mask {i}: best IoU {best}"


@pytest.mark.cuda
@cuda
def test_components_and_rle_on_gpu_equal_cpu() -> None:
    m = torch.from_numpy(_random_masks(5))
    np.testing.assert_array_equal(label_components(m.cuda()).cpu().numpy(), label_components(m).numpy())
    for mode in ("holes", "islands"):
        a, ca = remove_small_regions_batched(m.cuda(), 30, mode)
        b, cb = remove_small_regions_batched(m, 30, mode)
        assert torch.equal(a.cpu(), b) and torch.equal(ca.cpu(), cb)
    assert rle_dicts(m.cuda()) == mask_to_rle_pytorch(m)


# ----------------------------------------------------------------------------------------------- precision


def _tiny_sam_with_rel_pos(seed: int = 0):
    from tusss.masks.sam_registry import build_sam

    torch.manual_seed(seed)
    sam, _ = build_sam("vit_tiny", None)
    for blk in sam.image_encoder.blocks:  # SAM zero-inits them: make the relative-position term matter
        torch.nn.init.normal_(blk.attn.rel_pos_h, std=0.5)
        torch.nn.init.normal_(blk.attn.rel_pos_w, std=0.5)
    return sam


#: relative L2 error of the low-precision encoder against SAM's float32 encoder (random tiny SAM, CPU)
PRECISION_TOL = {"fp32": 1e-5, "bf16": 2e-2, "fp16": 5e-3}


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_lowp_encoder_equals_sam_encoder(precision: str) -> None:
    from tusss.masks.sam_precision import Float32LayerNorm, SDPAAttention, lowp_image_encoder

    sam = _tiny_sam_with_rel_pos()
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = sam.image_encoder(x)
        enc = lowp_image_encoder(sam.image_encoder, precision)
        out = enc(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    rel = float((out - ref).norm() / ref.norm())
    assert rel < PRECISION_TOL[precision], rel
    mods = list(enc.modules())
    assert sum(isinstance(m, SDPAAttention) for m in mods) == len(sam.image_encoder.blocks)
    norms = [m for m in mods if isinstance(m, Float32LayerNorm)]
    assert len(norms) == 2 * len(sam.image_encoder.blocks) + 2  # two per block + two in the neck
    assert all(p.dtype == torch.float32 for n in norms for p in n.parameters())
    assert enc.encoder.blocks[0].attn.qkv.weight.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16,
                                                           "fp16": torch.float16}[precision]
    assert next(sam.image_encoder.parameters()).dtype == torch.float32  # the original is untouched


def test_lowp_backend_in_mask_generator() -> None:
    """The backend runs inside MaskGenerator (encoder calls counted) and tags the cache key with its precision."""
    from tusss.masks.sam_precision import LowPrecisionSamBackend

    sam = _tiny_sam_with_rel_pos(3)
    gen = MaskGenerator(sam, preset_config("tuss", points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                           crop_n_layers=0, min_mask_region_area=0), amg="fast")
    img = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    ref = gen.generate(img)
    be = LowPrecisionSamBackend(sam, "fp32")
    g2 = gen.with_backend(be)
    got = g2.generate(img)
    assert be.encode_calls == 1
    assert len(got) == len(ref)
    np.testing.assert_allclose(got.predicted_iou, ref.predicted_iou, atol=1e-4)
    assert g2.config_hash != gen.config_hash and be.cache_tag == "torch-sdpa:fp32"
    with pytest.raises(InputError, match="precision"):
        LowPrecisionSamBackend(sam, "int4")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_lowp_encoder_on_gpu(precision: str) -> None:
    from tusss.masks.sam_precision import lowp_image_encoder

    sam = _tiny_sam_with_rel_pos()
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = sam.image_encoder.double()(x.double()).float()
        out = lowp_image_encoder(sam.image_encoder.float().cuda(), precision)(x.cuda()).cpu()
    assert torch.isfinite(out).all()
    assert float((out - ref).norm() / ref.norm()) < PRECISION_TOL[precision]
