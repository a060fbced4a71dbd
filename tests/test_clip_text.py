"""Text embeddings (docs/reference-code.md §4), template sets and vocabularies."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch

from tests._kernels_helpers import one_thread  # noqa: F401 (autouse fixture: torch on one thread)
from tusss.clip import DBAClip, get_templates, get_vocabulary
from tusss.clip.vocabularies import VOCABULARIES
from tusss.errors import InputError


@pytest.fixture(scope="module")
def tiny() -> DBAClip:
    torch.manual_seed(0)
    return DBAClip.from_pretrained("tusss-tiny", weights=None)


def _direct(model, names, templates) -> np.ndarray:
    """open_clip encode_text per template, L2-normalise, average over templates, L2-normalise."""
    tok = open_clip.get_tokenizer("tusss-tiny")
    acc = []
    with torch.no_grad():
        for t in templates:
            f = model.encode_text(tok([t.format(n) for n in names]))
            acc.append(f / f.norm(dim=-1, keepdim=True))
    avg = torch.stack(acc).mean(0)
    return (avg / avg.norm(dim=-1, keepdim=True)).numpy()


@pytest.mark.parametrize("templates", ["vild", "origami", ["a {} here.", "{}"]])
def test_encode_text_equals_open_clip(tiny, templates):
    names = ["cat", "person with clothes,people,human", "traffic light"]
    got = tiny.encode_text(names, templates)
    ref = _direct(tiny.model, names, get_templates(templates))
    assert got.shape == (3, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    # cached: same values, and the caller cannot corrupt the cache
    again = tiny.encode_text(names, templates)
    np.testing.assert_array_equal(got, again)
    again[:] = 0
    np.testing.assert_array_equal(tiny.encode_text(names, templates), got)


def test_logits_are_100_cos(tiny):
    rng = np.random.default_rng(0)
    e = rng.normal(size=(4, 32)).astype(np.float32)
    t = tiny.encode_text(["cat", "dog"], "origami")
    ref = 100 * (e / np.linalg.norm(e, axis=1, keepdims=True)) @ t.T
    np.testing.assert_allclose(tiny.logits(e, t), ref, rtol=1e-5, atol=1e-4)
    with pytest.raises(InputError):
        tiny.logits(e[:, :5], t)


def test_encode_text_bad_input(tiny):
    for bad in ([], "cat", [""], [3]):
        with pytest.raises(InputError):
            tiny.encode_text(bad)
    with pytest.raises(InputError, match="known sets"):
        tiny.encode_text(["cat"], "nope")
    with pytest.raises(InputError):
        tiny.encode_text(["cat"], ["no placeholder"])


def test_template_sets():
    assert len(get_templates("vild")) == 14
    assert get_templates("origami") == ("a clean origami {}.",)
    imagenet = get_templates("imagenet")
    assert len(imagenet) == 80 and len(set(imagenet)) == 80 and all("{}" in t for t in imagenet)
    assert get_templates("a {}.") == ("a {}.",)


def test_vocabularies():
    voc = get_vocabulary("voc")
    assert voc.bg_mode == "dustbin" and voc.num_fg == 20 and len(voc.names) == 45 and voc.num_classes == 21
    assert voc.names[2] == "bird avian" and voc.names[14] == "person with clothes,people,human"
    assert voc.dustbin_columns == tuple(range(20, 45)) and voc.templates == "vild"
    voc21 = get_vocabulary("voc21")
    assert voc21.names[0] == "background" and voc21.names[1:] == voc.names[:20]
    assert voc21.bg_mode == "explicit" and voc21.templates == "origami" and voc21.fg_columns == tuple(range(1, 21))
    voc20 = get_vocabulary("voc20")
    assert voc20.names == voc.names[:20] and voc20.bg_mode == "none" and voc20.bg_pixels_ignored
    coco = get_vocabulary("coco-object")
    assert coco.num_fg == 80 and len(coco.names) == 103 and coco.num_classes == 81
    assert coco.names[0].startswith("person, person in shirt") and coco.names[0].endswith(", body")
    assert "keyboard" not in coco.names[80:] and "sign" not in coco.names[80:]
    stuff = get_vocabulary("coco-stuff")
    assert len(stuff.names) == 171 == stuff.num_classes and len(set(stuff.names)) == 171
    city = get_vocabulary("cityscapes")
    assert len(city.names) == 19 and city.bg_mode == "none" and city.templates == "vild"
    for v in VOCABULARIES.values():
        assert len(v.column_class) == len(v.names) and len(v.class_names) == v.num_classes
        assert max(v.column_class) == v.num_classes - 1
    with pytest.raises(InputError, match="known vocabularies"):
        get_vocabulary("ade20k")
