"""DBA-CLIP embed_masks against the naive implementation of docs/reference-code.md §2-3 (tests/naive_dbaclip.py) and
against open_clip's own image tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from naive_dbaclip import naive_embed_masks

from tests._kernels_helpers import one_thread  # noqa: F401 (autouse fixture: torch on one thread)
from tusss.clip import DBAClip, DBAClipConfig
from tusss.clip.gsw import global_token_masks, make_layout, normalize_image

RTOL = 1e-4




def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _tiny(preset: str = "reference", seed: int = 0, **kw) -> DBAClip:
    torch.manual_seed(seed)
    return DBAClip.from_pretrained("tusss-tiny", weights=None, preset=preset, **kw)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth-ish image so that bicubic resizing is not pure noise
    base = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
    img = np.kron(base, np.ones((8, 8, 1)))[:h, :w]
    img += rng.normal(0, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _masks(h: int, w: int, seed: int = 0, n: int = 5) -> np.ndarray:
    """Overlapping rectangles/ellipses, one mask smaller than a patch, image not fully covered."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(h / 8, h / 3), rng.uniform(w / 8, w / 3)
        out.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1)
    out.append((yy >= h // 3) & (yy < h // 3 + 3) & (xx >= w // 2) & (xx < w // 2 + 5))  # < one patch
    out.append((yy < h // 4) & (xx < w // 3))  # overlaps the ellipses somewhere
    m = np.stack(out)
    m = m[m.reshape(len(m), -1).any(1)]
    assert not m.any(0).all(), "some pixels must be covered by no mask"
    return m


# small geometry (short side 112, 64-px windows at stride 16): many windows, pos-embed resizing everywhere
SMALL = {"target_size": 112, "window_sizes": (64,)}


@pytest.mark.parametrize("hw", [(97, 131), (150, 101), (112, 112), (61, 203)])
def test_reference_matches_naive_tiny(hw):
    m = _tiny(**SMALL)
    img, masks = _image(*hw), _masks(*hw, seed=hw[0])
    # the case really has tokens covered by no mask and a mask (index -2) smaller than a patch
    lay = make_layout(*hw, m.cfg)
    tm = global_token_masks(torch.from_numpy(masks), (lay.resized_hw[0] // 16, lay.resized_hw[1] // 16))
    assert not tm.any(0).all() and tm[-2].sum() <= 1 and masks[-2].sum() < 16 * 16
    got = m.embed_masks(img, masks)
    ref = naive_embed_masks(m.model, img, masks, m.cfg)
    assert got.shape == (len(masks), 32) and got.dtype == np.float32
    assert _rel(got, ref) < RTOL


def test_reference_bias_is_active():
    """The joint bias changes the result: reference != sclip (same weights, no bias) on partial masks."""
    hw = (97, 131)
    img, masks = _image(*hw), _masks(*hw)
    a = _tiny(**SMALL).embed_masks(img, masks)
    b = _tiny("sclip", **SMALL).embed_masks(img, masks)
    assert _rel(a, b) > 1e-3
    # the bias depends on the other masks of the image (joint bias, docs/reference-code.md §2)
    c = _tiny(**SMALL).embed_masks(img, masks[:2])
    assert _rel(a[:2], c) > 1e-4


def test_whole_image_mask_separately():
    """A whole-image mask makes every token pair share a mask: the bias vanishes (equal to sclip)."""
    hw = (90, 120)
    img = _image(*hw, seed=3)
    masks = _masks(*hw, seed=3)
    full = np.ones((1, *hw), dtype=bool)
    with_full = np.concatenate([full, masks])
    m = _tiny(**SMALL)
    got = m.embed_masks(img, with_full)
    assert _rel(got, naive_embed_masks(m.model, img, with_full, m.cfg)) < RTOL
    assert _rel(got, _tiny("sclip", **SMALL).embed_masks(img, with_full)) < RTOL


def test_reference_default_windows_match_naive():
    """Default 224 windows at stride 56 (short side 224 -> 1 x 4 windows) + global pass."""
    hw = (150, 260)
    m = _tiny(target_size=224)
    lay = make_layout(*hw, m.cfg)
    assert lay.resized_hw == (224, 400) and lay.groups[0].xs == (0, 56, 112, 168, 176)
    img, masks = _image(*hw, seed=5), _masks(*hw, seed=5)
    assert _rel(m.embed_masks(img, masks), naive_embed_masks(m.model, img, masks, m.cfg)) < RTOL


@pytest.mark.parametrize(
    "preset,kw",
    [
        ("paper", {}),
        ("paper", {"max_batch_tokens": 40}),  # several (crop, mask) chunks per forward
        ("maskclip", {}),
        ("sclip", {}),
        ("plain", {}),
        ("reference", {"cls_visible": False, "residual_weight": 0.0, "attention_weight": 2.0}),
        ("reference", {"attention_mode": "mean", "force_diagonal": True, "bias_value": -8.0}),
        ("reference", {"global_weight": 0.0}),
        ("reference", {"global_weight": 1.0, "keep_ffn": False}),
        ("cityscapes", {"window_sizes": (96, 48)}),
    ],
)
def test_presets_match_naive(preset, kw):
    hw = (77, 101)
    overrides = {**SMALL, **kw}
    m = _tiny(preset, **overrides)
    img, masks = _image(*hw, seed=7), _masks(*hw, seed=7, n=3)
    got = m.embed_masks(img, masks)
    assert _rel(got, naive_embed_masks(m.model, img, masks, m.cfg)) < RTOL


def test_paper_preset_differs_from_reference():
    hw = (77, 101)
    img, masks = _image(*hw, seed=7), _masks(*hw, seed=7, n=3)
    a = _tiny("paper", **SMALL).embed_masks(img, masks)
    b = _tiny("reference", **SMALL, stride_divisor=2).embed_masks(img, masks)
    assert _rel(a, b) > 1e-3


@pytest.fixture(scope="module")
def vitb16():
    """Real ViT-B/16 architecture (QuickGELU, as OpenAI's) with random weights, built once."""
    torch.manual_seed(0)
    return DBAClip.from_pretrained("ViT-B-16", weights=None).model


def test_vit_b16_random_weights_match_naive(vitb16):
    """ViT-B/16, random weights, reduced geometry: short side 112, 112-px windows (1 x 4) + global pass."""
    m = DBAClip(vitb16, DBAClipConfig.preset("reference", target_size=112, window_sizes=(112,)))
    hw = (75, 110)  # resized 112 x 176
    assert make_layout(*hw, m.cfg).n_windows == 4
    img, masks = _image(*hw, seed=11), _masks(*hw, seed=11, n=3)
    got = m.embed_masks(img, masks)
    assert got.shape == (len(masks), 512)
    assert _rel(got, naive_embed_masks(m.model, img, masks, m.cfg)) < RTOL


def _open_clip_tokens(visual, x: torch.Tensor) -> np.ndarray:
    visual.output_tokens = True
    try:
        with torch.no_grad():
            _, tokens = visual(x)
    finally:
        visual.output_tokens = False
    return (tokens @ visual.proj)[0].reshape(14, 14, -1).numpy()


@pytest.mark.parametrize("model", ["tusss-tiny", "ViT-B-16"])
def test_plain_tokens_equal_open_clip_forward(model, request):
    """Bias off and the last block unmodified: token features == open_clip's own tower (tokens @ proj)."""
    cfg = DBAClipConfig.preset("plain", target_size=None, global_weight=1.0)
    if model == "ViT-B-16":
        m = DBAClip(request.getfixturevalue("vitb16"), cfg)
    else:
        torch.manual_seed(1)
        m = DBAClip.from_pretrained(model, weights=None, preset="plain", target_size=None, global_weight=1.0)
    img = _image(224, 224, seed=2)
    masks = np.ones((1, 224, 224), dtype=bool)
    _, g, w = m.pass_features(img, masks)
    assert not w
    x = normalize_image(img, m.cfg.image_mean, m.cfg.image_std)[None]
    ref = _open_clip_tokens(m.model.visual, x)
    assert _rel(g.numpy(), ref) < RTOL
    # the pooled whole-image embedding is the mean of the (bilinear-upsampled) token map
    e = m.embed_masks(img, masks)[0]
    assert np.allclose(e, ref.mean((0, 1)), rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_layout_reference_geometry():
    cfg = DBAClipConfig.preset("reference")
    lay = make_layout(375, 500, cfg)
    assert lay.resized_hw == (448, 608)
    g = lay.groups[0]
    assert g.ys == (0, 56, 112, 168, 224) and g.xs == (0, 56, 112, 168, 224, 280, 336, 384)
    assert lay.n_windows == 40 and lay.global_weight == 0.5
    paper = make_layout(375, 500, DBAClipConfig.preset("paper"))
    assert paper.groups[0].ys == (0, 112, 224) and paper.groups[0].xs == (0, 112, 224, 336, 384)
    cs = make_layout(1024, 2048, DBAClipConfig.preset("cityscapes"))
    assert cs.resized_hw == (512, 1024) and not cs.has_global
    assert [g.size for g in cs.groups] == [(448, 448), (224, 224)]
    assert cs.groups[1].ys == (0, 112, 224, 288)


@pytest.mark.parametrize("preset,kernels", [("reference", None), ("cityscapes", None), ("paper", "reference")])
def test_embed_masks_is_deterministic_and_batch_independent(preset, kernels, monkeypatch):
    """A batch of N windows gives each window what N separate single-window runs give (window features and the
    final embeddings), and a repeated call is bit-identical."""
    from tusss.clip.gsw import resize_image, window_crops, window_token_masks

    if kernels:  # paper preset: one last-block pass per (window, mask), chunked across windows
        monkeypatch.setenv("TUSSS_KERNELS", kernels)
    over = dict(SMALL, max_batch_tokens=3 * 17) if preset == "paper" else dict(SMALL)
    if preset == "cityscapes":
        over = {"target_size": 112, "window_sizes": (64, 32)}
    m = _tiny(preset, **over)
    hw = (80, 96)
    img, masks = _image(*hw, seed=9), _masks(*hw, seed=9)
    a = m.embed_masks(img, masks)
    np.testing.assert_array_equal(a, m.embed_masks(img, masks))

    cfg, lay = m.cfg, m.layout(hw)
    resized = normalize_image(resize_image(img, lay.resized_hw), cfg.image_mean, cfg.image_std)
    m_t = torch.from_numpy(masks)
    group = lay.groups[0]
    crops, tm = window_crops(resized, group), window_token_masks(m_t, lay, group, cfg)
    assert crops.shape[0] == group.n >= 4
    batch = m.runner.features(crops, tm)
    single = torch.cat([m.runner.features(crops[i:i + 1], tm[i:i + 1]) for i in range(group.n)], 0)
    assert batch.shape == single.shape
    assert _rel(batch.numpy(), single.numpy()) < 1e-5

    features = m.runner.features  # the whole pipeline with every pass run one window at a time

    def one_window_at_a_time(images, token_masks):
        return torch.cat([features(images[i:i + 1], None if token_masks is None else token_masks[i:i + 1])
                          for i in range(images.shape[0])], 0)

    monkeypatch.setattr(m.runner, "features", one_window_at_a_time)
    assert _rel(m.embed_masks(img, masks), a) < 1e-5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    cpu = _tiny(**SMALL)
    torch.manual_seed(0)
    gpu = DBAClip.from_pretrained("tusss-tiny", weights=None, device="cuda", **SMALL)
    gpu.model.load_state_dict(cpu.model.state_dict())
    hw = (97, 131)
    img, masks = _image(*hw), _masks(*hw)
    assert _rel(gpu.embed_masks(img, masks), cpu.embed_masks(img, masks)) < 1e-3  # TF32 / kernel differences
    np.testing.assert_allclose(gpu.encode_text(["cat", "dog"]), cpu.encode_text(["cat", "dog"]), atol=1e-3)
