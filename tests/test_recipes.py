"""Recipe files: every shipped recipe loads, validates and round-trips (checked with the standard library's
TOML parser); unknown / misspelled keys and wrong types are errors; the authors' constants are where the
issue says (per split / per round); the probe schedule (iterations, warm-up fixed for COCO) and the GLCC
config derived from a recipe; the vocabulary fixes (Cityscapes names, VOC21 pow variant); store default."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from tusss.errors import InputError
from tusss.recipes import list_recipes, load_recipe, loads_recipe, recipe_path
from tusss.recipes.runner import glcc_config, probe_schedule

EXPECTED = {
    "voc-full", "voc-semi-1-16", "voc-semi-1-8", "voc-semi-1-4", "voc-semi-1-2", "voc-weak", "coco-object-full",
    "coco-object-semi-1-512", "coco-object-semi-1-256", "coco-object-semi-1-128", "coco-object-semi-1-64",
    "coco-object-semi-1-32", "coco2014-weak", "ov-voc21", "ov-voc21-pow", "ov-voc20", "ov-coco-object",
    "ov-coco-stuff", "ov-cityscapes",
}


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


def test_every_experiment_has_a_recipe():
    assert set(list_recipes()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_loads_validates_and_round_trips(name):
    r = load_recipe(name)
    assert r.name == name
    text = recipe_path(name).read_text(encoding="utf-8")
    # the shipped file is the canonical text (after its comment header) and parses with tomllib to the same
    # values the loader kept
    assert r.dumps() == "".join(ln + "\n" for ln in text.splitlines() if not ln.startswith("#"))
    doc = tomllib.loads(r.dumps())
    for sec in doc:
        if isinstance(doc[sec], dict):
            for k, v in doc[sec].items():
                assert _same(v, r.data[sec][k]) or k in ("fg", "bg", "lp_fg", "grid"), (sec, k)
        else:
            assert doc[sec] == r.data[sec]
    again = loads_recipe(r.dumps())
    assert again == r and _same(again.data, r.data)
    assert (r["paper"]["miou"] > 0) and r["paper"]["table"].startswith("Table")
    for sec in ("dataset", "masks", "clip"):
        assert r[sec]["source"], f"{name}: [{sec}] names no source config"


def test_unknown_and_misspelled_keys_and_bad_types():
    base = recipe_path("voc-weak").read_text()
    with pytest.raises(InputError, match=r"unknown key 'k_bra'.*did you mean 'k_bar'"):
        loads_recipe(base.replace("k_bar = 12", "k_bra = 12"))
    with pytest.raises(InputError, match=r"unknown key or section 'glc'"):
        loads_recipe(base.replace("[glcc]", "[glc]"))
    with pytest.raises(InputError, match="must be an integer"):
        loads_recipe(base.replace("k_bar = 12", 'k_bar = "12"'))
    with pytest.raises(InputError, match="must be a number"):
        loads_recipe(base.replace("alpha = 0.9", "alpha = true"))
    with pytest.raises(InputError, match="one entry per round"):
        loads_recipe(base.replace("k = [50, 12]", "k = [50]"))
    with pytest.raises(InputError, match="sampler must be one of"):
        loads_recipe(base.replace('sampler = "random"', 'sampler = "two_stream"'))
    with pytest.raises(InputError, match=r"lp_fg\[0\] has unknown key 'l1'"):
        loads_recipe(base.replace("{softmax = 1.0, norm = true, L1 = true", "{softmax = 1.0, norm = true, l1 = true"))
    with pytest.raises(InputError, match="version 2 is not supported"):
        loads_recipe(base.replace("version = 1", "version = 2"))
    with pytest.raises(InputError, match="not valid TOML"):
        loads_recipe(base + "\n[[[")
    with pytest.raises(InputError, match=r"did you mean 'voc-weak'"):
        load_recipe("voc-waek")
    r = load_recipe("voc-weak")
    with pytest.raises(InputError, match=r"section \[glcc\] has no key 'kk'"):
        r.with_overrides(["glcc.kk=3"])
    with pytest.raises(InputError, match="must be an array"):
        r.with_overrides(["glcc.k=50"])
    r2 = r.with_overrides(["glcc.k=[40, 10]", "probe.iter_factor.1=0.5", "combine.w=2",
                           "text.bg={method = 'pow', pow = 2.0}"])
    assert r2["glcc"]["k"] == [40, 10] and r2["probe"]["iter_factor"] == [0.25, 0.5] and r2["combine"]["w"] == 2.0
    assert r2["text"]["bg"]["pow"] == 2.0 and r["glcc"]["k"] == [50, 12]  # the original is unchanged


def test_authors_constants_per_recipe():
    semi = {"1-16": (0.8, 50, 25), "1-8": (0.8, 50, 12), "1-4": (0.8, 25, 25), "1-2": (0.7, 25, 25)}
    for frac, (a, k, kb) in semi.items():
        g = load_recipe(f"voc-semi-{frac}")["glcc"]
        assert (g["alpha"], g["k"], g["k_bar"]) == (a, [k], kb)
    w = load_recipe("voc-weak")
    assert w["glcc"]["k"] == [50, 12] and w["glcc"]["k_bar"] == 12 and w["combine"]["w"] == 1.5
    assert w["glcc"]["rounds"] == 2
    # VOC weak round 1 re-scoring grid: softmax variants only
    fg_grid = w["tune"]["grid"]["glcc.lp_fg.0"]
    assert all(f["softmax"] is not False and f["norm"] and not f["bypath_suppress"] for f in fg_grid)
    assert sorted(f["softmax"] for f in fg_grid if f["L1"]) == [0.125, 0.25, 0.5, 1.0, 2.0]
    assert [f["softmax"] for f in fg_grid if not f["L1"]] == [0.5]
    assert w["tune"]["grid"]["glcc.lp_alpha_bg.0"] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    for n in ("coco-object-semi-1-512", "coco-object-semi-1-32"):
        c = load_recipe(n)
        assert c["semi"]["start"] == "ov" and c["semi"]["semi_balance"] and c["probe"]["sampler"] == "semi_balance"
    assert load_recipe("voc-semi-1-16")["probe"]["sampler"] == "random"
    assert load_recipe("ov-cityscapes")["clip"]["preset"] == "cityscapes"
    assert load_recipe("ov-voc21-pow")["text"]["vocabulary"] == "voc21-pow"


@pytest.mark.parametrize("name,iters,warm", [
    ("voc-full", [120_000], [12_000]), ("voc-weak", [240_000, 240_000], [24_000, 24_000]),
    ("voc-semi-1-16", [240_000], [24_000]), ("coco-object-full", [720_000], [18_000]),
    ("coco-object-semi-1-128", [720_000], [18_000]), ("coco2014-weak", [480_000, 240_000], [12_000, 12_000]),
])
def test_probe_schedule_is_the_authors(name, iters, warm):
    """Iterations = base / iter_factor; the warm-up scales for VOC but is fixed for COCO (18k / 12k)."""
    p = probe_schedule(load_recipe(name))
    assert [c.iters for c in p] == iters and [c.warmup_iters for c in p] == warm
    cfg = glcc_config(load_recipe(name))
    assert cfg.probe_rounds == p and cfg.probe.iters == iters[0]


def test_glcc_config_of_weak_recipe():
    cfg = glcc_config(load_recipe("voc-weak"))
    assert cfg.k_rounds == (50, 12) and cfg.rounds == 2 and cfg.k_bar == 12 and cfg.alpha == 0.9
    assert cfg.lp_fg_rounds[0].softmax == 1.0 and cfg.lp_fg_rounds[1].softmax is None
    assert cfg.lp_fg_rounds[1].norm and cfg.lp_fg_rounds[1].L1 and not cfg.lp_fg_rounds[1].bypath_suppress
    assert cfg.combine.w == 1.5 and cfg.combine.lp_l1
    with pytest.raises(InputError, match="open-vocabulary"):
        glcc_config(load_recipe("ov-voc20"))


def test_cityscapes_and_voc21_pow_vocabularies():
    from tusss.clip.vocabularies import get_vocabulary
    from tusss.pipeline import resolve_class_set

    cs = get_vocabulary("cityscapes")
    assert "traffic light" in cs.names and "traffic sign" in cs.names and "trafficlight" not in cs.names
    v = resolve_class_set(vocabulary="voc21-pow")
    assert v.bg_mode == "dustbin" and len(v.names) == 20 and v.num_classes == 21 and v.class_names[0] == "background"


def test_voc21_pow_scores_are_the_pow_background_over_20_names():
    """OV scoring of voc21-pow: softmax over the 20 fg names, bg = (1 - max)^p, computed naively."""
    from tusss.pipeline import OVSegmenter

    class _Clip:  # OVSegmenter.score needs no network
        pass

    seg = OVSegmenter(None, _Clip(), vocabulary="voc21-pow", bg_pow=2.0)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 20)) * 3
    scores, labels, _ = seg.score(z)
    e = np.exp(z - z.max(1, keepdims=True))
    s = e / e.sum(1, keepdims=True)
    want = np.concatenate([(1 - s.max(1, keepdims=True)) ** 2, s], 1)
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-7)
    assert labels.tolist() == want.argmax(1).tolist()


def test_store_default_dtype_is_float32(tmp_path):
    from tusss.data.store import EmbeddingStore, StoreWriter

    x = (np.arange(12, dtype=np.float32) / 7).reshape(3, 4)
    with StoreWriter(tmp_path / "s", 4) as w:
        w.add("a", x, area=np.ones(3))
    st = EmbeddingStore(tmp_path / "s")
    assert st.dtype == np.float32
    np.testing.assert_array_equal(st.embeddings(), x)  # float16 would round 1/7


def test_recipes_ship_in_the_package():
    import tusss.recipes

    folder = Path(tusss.recipes.__file__).parent
    assert {p.stem for p in folder.glob("*.toml")} == EXPECTED
