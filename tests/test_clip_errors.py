"""Bad inputs, presets and weights handling of DBA-CLIP."""

from __future__ import annotations

import warnings

import numpy as np
import open_clip
import pytest
import torch

from tests._kernels_helpers import one_thread  # noqa: F401 (autouse fixture: torch on one thread)
from tusss.clip import DBAClip, DBAClipConfig
from tusss.errors import CorruptFileError, InputError, WeightsNotFoundError


@pytest.fixture(scope="module")
def tiny() -> DBAClip:
    torch.manual_seed(0)
    return DBAClip.from_pretrained("tusss-tiny", weights=None, target_size=64, window_sizes=(32,))


def test_bad_images_and_masks(tiny):
    img = np.zeros((40, 50, 3), np.uint8)
    ok = np.zeros((1, 40, 50), bool)
    ok[0, :10, :10] = True
    bad = [
        (img.astype(np.float32), ok, "dtype"),
        (img[..., :2], ok, "shape"),
        (img[0], ok, "shape"),
        ([[0]], ok, "numpy"),
        (img, ok[:, :30], "size"),
        (img, np.zeros((0, 40, 50), bool), "empty"),
        (img, np.concatenate([ok, np.zeros((1, 40, 50), bool)]), "all-False"),
        (img, ok.astype(np.uint8), "bool"),
        (img, ok[0], "shape"),
    ]
    for image, masks, msg in bad:
        with pytest.raises(InputError, match=msg):
            tiny.embed_masks(image, masks)
    assert tiny.embed_masks(img, ok).shape == (1, 32)


def test_presets_and_overrides():
    with pytest.raises(InputError, match="known presets"):
        DBAClipConfig.preset("nope")
    with pytest.raises(InputError, match="unknown DBAClipConfig field"):
        DBAClipConfig.preset("reference", stride=3)
    with pytest.raises(InputError):
        DBAClipConfig.preset("reference", attention="flash")
    with pytest.raises(InputError):
        DBAClipConfig.preset("reference", global_weight=1.5)
    with pytest.raises(InputError, match="known presets"):
        DBAClip.from_pretrained("tusss-tiny", weights=None, preset="nope")
    ref = DBAClipConfig.preset("reference")
    assert ref == DBAClipConfig() and ref.window_strides() == (56,) and ref.bias_value == -4.0
    paper = DBAClipConfig.preset("paper")
    assert paper.window_strides() == (112,) and paper.bias == "per_mask" and paper.attention_mode == "mean"
    assert DBAClipConfig.preset("paper", bias_value=-50.0).bias_value == -50.0
    assert DBAClipConfig.preset("maskclip").attention == "identity"
    with pytest.raises(InputError, match="unknown open_clip model"):
        DBAClip.from_pretrained("ViT-X-99", weights=None)


def test_missing_openai_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TUSSS_HOME", str(tmp_path))
    monkeypatch.setenv("TUSSS_OFFLINE", "1")
    url = open_clip.get_pretrained_cfg("ViT-B-16", "openai")["url"]
    with pytest.raises(WeightsNotFoundError) as ei:
        DBAClip.from_pretrained("ViT-B-16", weights="openai")
    msg = str(ei.value)
    assert "ViT-B-16.pt" in msg and url in msg and str(tmp_path / "open_clip") in msg
    with pytest.raises(WeightsNotFoundError, match="nowhere.pt"):
        DBAClip.from_pretrained("tusss-tiny", weights=tmp_path / "nowhere.pt")
    with pytest.raises(InputError, match="no OpenAI weights"):
        DBAClip.from_pretrained("tusss-tiny", weights="openai")


def test_checkpoint_path_roundtrip_and_corrupt(tmp_path, tiny):
    path = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), path)
    torch.manual_seed(123)  # a different random init, overwritten by the checkpoint
    loaded = DBAClip.from_pretrained("tusss-tiny", weights=path, target_size=64, window_sizes=(32,))
    img = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    masks = np.zeros((2, 40, 50), bool)
    masks[0, :20] = True
    masks[1, 15:, 10:] = True
    np.testing.assert_array_equal(loaded.embed_masks(img, masks), tiny.embed_masks(img, masks))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptFileError, match="bad.pt"):
        DBAClip.from_pretrained("tusss-tiny", weights=bad)



def test_openai_style_jit_archive_roundtrip(tmp_path):
    """A TorchScript archive (the format of OpenAI's ViT-B-16.pt) loads into the named architecture."""
    torch.manual_seed(3)
    src = DBAClip.from_pretrained("tusss-tiny", weights=None, target_size=64, window_sizes=(32,))
    path = tmp_path / "tiny_openai.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated, still works
        torch.jit.script(src.model).save(str(path))
    loaded = DBAClip.from_pretrained("tusss-tiny", weights=path, target_size=64, window_sizes=(32,))
    img = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    masks = np.zeros((2, 40, 50), bool)
    masks[0, :20] = True
    masks[1, 15:, 10:] = True
    np.testing.assert_allclose(loaded.embed_masks(img, masks), src.embed_masks(img, masks), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.encode_text(["cat", "dog"]), src.encode_text(["cat", "dog"]),
                               rtol=1e-5, atol=1e-6)
