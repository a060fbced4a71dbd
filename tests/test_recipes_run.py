"""`tusss run --recipe ...` on a tiny VOC layout with tiny models (tusss-tiny CLIP, random weights; masks from a
counting grid generator through the runner's mask_generator hook): finishes, resumes after an interrupt
without recomputing finished stages (calls counted), a second run is a no-op; results equal an independent
recomputation (GLCC.load(...).predict + tusss.evaluation.evaluate on the written predictions)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from _tiny_datasets import make_voc

from tusss.masks.maskset import MaskSet
from tusss.recipes import load_recipe
from tusss.recipes.runner import RecipeRunner, glcc_config, weak_image_labels

TINY = ["clip.model=tusss-tiny", "clip.weights=random",
        "clip.opts={target_size = 64, window_sizes = [32], stride_divisor = 1}",
        "probe.base_iters=20", "probe.base_warmup=2", "probe.batch_size=16", "glcc.k_bar=3"]


@dataclass
class _Cfg:
    def to_dict(self) -> dict:
        return {"kind": "grid 5x7"}


class GridGenerator:
    """Stand-in for SAM: 5 x 7 pixel blocks as masks (3 levels), counting its calls."""

    config_hash = "grid-5x7-test"
    model_type = "grid"
    weights_id = "none"
    config = _Cfg()

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, image: np.ndarray) -> MaskSet:
        self.calls += 1
        h, w = image.shape[:2]
        ms = []
        for y in range(0, h, 5):
            for x in range(0, w, 7):
                m = np.zeros((h, w), bool)
                m[y:y + 5, x:x + 7] = True
                ms.append(m)
        M = len(ms)
        return MaskSet(np.stack(ms), np.arange(M) % 3, np.ones(M), np.ones(M))


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes_run") / "VOC2012"
    make_voc(root, {"train_aug": [f"2007_{i:06d}" for i in range(6)], "val": ["2008_000001", "2008_000002"]})
    return root


def test_run_weak_resume_and_noop(voc_root, tmp_path, monkeypatch):
    from tusss.clip.model import DBAClip
    from tusss.glcc.model import GLCC

    recipe = load_recipe("voc-weak", TINY + ["glcc.k=[5, 3]"])
    gen = GridGenerator()
    calls = {"embed": 0, "fit": 0}
    real_embed, real_fit = DBAClip.embed_masks, GLCC.fit

    def embed(self, image, masks, *a, **k):
        calls["embed"] += 1
        if calls.get("interrupt_at") == calls["embed"]:
            raise KeyboardInterrupt
        return real_embed(self, image, masks, *a, **k)

    def fit(self, *a, **k):
        calls["fit"] += 1
        return real_fit(self, *a, **k)

    monkeypatch.setattr(DBAClip, "embed_masks", embed)
    monkeypatch.setattr(GLCC, "fit", fit)
    work = tmp_path / "work"

    def runner():
        return RecipeRunner(recipe, voc_root, work, mask_generator=gen, shard_size=1, log=None)

    calls["interrupt_at"] = 4  # Ctrl-C while embedding the 4th training image
    with pytest.raises(KeyboardInterrupt):
        runner().run()
    assert gen.calls == 8 and calls["fit"] == 0  # all masks were made before the embed stage

    calls.update(embed=0, interrupt_at=None)
    res = runner().run()
    assert gen.calls == 8  # masks stage skipped
    assert calls["embed"] == 3 + 2  # the 3 unfinished training images, then the 2 val images
    assert calls["fit"] == 1
    assert res.stages == {"masks": "skipped", "embed_train": "done", "embed_eval": "done", "fit": "done",
                          "predict": "done", "eval": "done"}

    calls.update(embed=0, fit=0)
    again = runner().run()  # a second run is a no-op
    assert gen.calls == 8 and calls == {"embed": 0, "fit": 0, "interrupt_at": None}
    assert set(again.stages.values()) == {"skipped"}
    assert again.metrics == res.metrics
    assert "mIoU" in again.table and "81.8" in again.table and "75.3" in again.table

    # the written predictions are GLCC.load(fit).predict of the val store, and the metrics are evaluate()'s
    from tusss.data.datasets import get_dataset
    from tusss.data.store import EmbeddingStore
    from tusss.evaluation import evaluate
    from tusss.masks.cache import open_mask_cache

    p = res.paths
    m = GLCC.load(p["fit"])
    assert m.kind_ == "weak" and m.k_graph_ == 3
    assert m.provenance["clip_model"] == "tusss-tiny" and m.provenance["mask_config_hash"] == gen.config_hash
    st = EmbeddingStore(p["embed_eval"])
    meta = st.metadata()
    s = m.predict(st.embeddings())
    for i in st.image_ids:
        js = json.loads((work / "predict" / p["predict"].split("/")[-1] / "masks" / f"{i}.json").read_text())
        assert [d["label"] for d in js["masks"]] == s[meta.image_id == i].argmax(1).tolist()
    ref = evaluate(get_dataset("voc", voc_root, "val"), p["predict"], open_mask_cache(p["masks"]))
    assert res.miou == pytest.approx(ref["mIoU"]) and res.mask_f1 == pytest.approx(ref["mask"]["F1"])

    # changing a predict-time field (combine.w) refits nothing; changing k refits
    calls.update(embed=0, fit=0)
    r2 = RecipeRunner(recipe.with_overrides(["combine.w=0.5"]), voc_root, work, mask_generator=gen, shard_size=1,
                      log=None).run()
    assert calls["fit"] == 0 and r2.stages["predict"] == "done" and r2.stages["fit"] == "skipped"
    RecipeRunner(recipe.with_overrides(["glcc.k=[4, 3]"]), voc_root, work, mask_generator=gen, log=None).run()
    assert calls["fit"] == 1 and calls["embed"] == 0


def test_full_and_ov_recipes_run(voc_root, tmp_path):
    gen = GridGenerator()
    full = RecipeRunner(load_recipe("voc-full", TINY + ["glcc.k=[5]"]), voc_root, tmp_path / "w", mask_generator=gen,
                        log=None).run()
    assert np.isfinite(full.miou) and "84.2" in full.table
    assert glcc_config(load_recipe("voc-full")).combine.w == 2.0
    ov = RecipeRunner(load_recipe("ov-voc21", TINY), voc_root, tmp_path / "w", mask_generator=gen, log=None).run()
    assert "fit" not in ov.stages and np.isfinite(ov.miou) and "74.3" in ov.table
    # the masks of val were cached by the first run: the ov run generated none
    assert gen.calls == 8


def test_weak_image_labels_come_from_the_gt_not_from_the_masks(voc_root, tmp_path):
    """A class present in the GT but covered by no mask is kept (the old code took the classes of the masks'
    GT fractions and lost it)."""
    from tusss.data.datasets import get_dataset
    from tusss.labels import vote_fractions

    ds = get_dataset("voc", voc_root, "train_aug")
    i = ds.ids[0]
    gt = ds.label(i)
    present = sorted(set(np.unique(gt).tolist()) - {0, 255})
    lost = present[-1]
    masks = np.stack([(gt != lost) & (gt != 255)])  # one mask that covers everything but the class `lost`
    old = np.flatnonzero((vote_fractions(masks, gt, 21)[:, 1:] > 0).any(0))  # the old rule, kept here
    assert lost - 1 not in old.tolist()
    new = weak_image_labels(ds, [i])[0]
    assert new.tolist() == [c - 1 for c in present]


def _tiny_set_args(extra=()):
    out = []
    for s in [*TINY, *extra]:
        out += ["--set", s]
    return out


def test_cli_run_fit_tune(voc_root, tmp_path, capsys):
    """`tusss run` reuses what the library run left (masks came from the grid generator), `tusss fit --recipe`
    fits the same GLCC as the run's fit stage, and `tusss tune` labels its output "tuned on ground truth"."""
    from tusss.cli import main
    from tusss.glcc.model import GLCC

    work = tmp_path / "w"
    gen = GridGenerator()
    lib = RecipeRunner(load_recipe("voc-weak", TINY + ["glcc.k=[5, 3]"]), voc_root, work, mask_generator=gen,
                       log=None).run()
    capsys.readouterr()
    args = ["run", "--recipe", "voc-weak", "--root", str(voc_root), "--work", str(work), "--no-progress",
            *_tiny_set_args(["glcc.k=[5, 3]"])]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and "81.8" in out and f"{100 * lib.miou:.1f}" in out

    # tusss fit --recipe on the run's training store = the run's fit stage (GT image labels via the store's root)
    model = tmp_path / "model"
    assert main(["fit", "--store", lib.paths["embed_train"], "--recipe", "voc-weak", "--out", str(model),
                 "--weights", "random", "--no-progress", *_tiny_set_args(["glcc.k=[5, 3]"])]) == 0
    a, b = GLCC.load(model), GLCC.load(lib.paths["fit"])
    np.testing.assert_allclose(a.pstar_, b.pstar_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.probe_.weight.numpy(), b.probe_.weight.numpy(), rtol=1e-5, atol=1e-6)
    assert main(["fit", "--store", lib.paths["embed_train"], "--recipe", "voc-weak", "--supervision", "full",
                 "--out", str(tmp_path / "m2")]) == 1  # contradicts the recipe
    capsys.readouterr()

    # tune: the authors' grid of the VOC21 OV background exponent, on GT
    assert main(["tune", "--recipe", "ov-voc21", "--root", str(voc_root), "--work", str(work), "--no-progress",
                 "--out", str(tmp_path / "tune.json"), *_tiny_set_args()]) == 0
    out = capsys.readouterr().out
    assert out.count("[tuned on ground truth]") == 5 and "TUNED ON GROUND TRUTH" in out
    res = json.loads((tmp_path / "tune.json").read_text())
    best = max(res["trials"], key=lambda t: t["mIoU"])
    assert res["best"]["text.bg"] == best["value"] and res["label"] == "tuned on ground truth"
    plain = RecipeRunner(load_recipe("ov-voc21", TINY), voc_root, work, log=None).run()  # alpha 1 = first trial
    assert res["trials"][0]["mIoU"] == pytest.approx(plain.miou)
    assert main(["recipes"]) == 0 and "voc-semi-1-16" in capsys.readouterr().out
    assert main(["recipes", "show", "voc-weak", "--set", "combine.w=2.5"]) == 0
    assert "w = 2.5" in capsys.readouterr().out
    assert main(["run", "--recipe", "voc-wek", "--root", str(voc_root), "--work", str(work)]) == 1
    assert "did you mean 'voc-weak'" in capsys.readouterr().err


def test_a_bad_image_never_stops_the_run(tmp_path):
    """A corrupt training image is recorded and skipped (the run goes on and reports it, nothing is marked
    complete); once the file is repaired, the next run retries it and equals a clean run."""
    root = tmp_path / "VOC2012"
    make_voc(root, {"train_aug": [f"2007_{i:06d}" for i in range(5)], "val": ["2008_000001"]})
    bad = root / "JPEGImages" / "2007_000002.jpg"
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 3])  # truncated JPEG
    recipe = load_recipe("voc-full", TINY + ["glcc.k=[4]"])
    gen = GridGenerator()
    r1 = RecipeRunner(recipe, root, tmp_path / "w", mask_generator=gen, log=None).run()
    assert sorted(r1.failures) == ["embed train 2007_000002", "masks train 2007_000002"] and "failed" in r1.table
    assert "cannot be decoded" in r1.failures["masks train 2007_000002"]
    assert r1.stages["predict"] == "done (incomplete)" and "incomplete" in r1.metrics
    bad.write_bytes(good)
    r2 = RecipeRunner(recipe, root, tmp_path / "w", mask_generator=gen, log=None).run()
    assert not r2.failures and r2.stages["masks"] == "done" and r2.stages["fit"] == "done"
    clean = RecipeRunner(recipe, root, tmp_path / "clean", mask_generator=GridGenerator(), log=None).run()
    assert r2.metrics == clean.metrics


def test_semi_recipes_build_the_authors_supervision(voc_root, tmp_path, monkeypatch):
    """VOC semi (zeros for unlabelled, random sampler) and the COCO-style semi start (open-vocabulary scores
    for the unlabelled rows, semi balance, two-stream sampler) reach GLCC.fit as the typed SemiSupervision the
    recipe describes; the OV scores equal OVSegmenter.score image by image."""
    from tusss.glcc.model import GLCC
    from tusss.supervision import SemiSupervision

    lab_file = voc_root / "third_party" / "semi_split" / "pascal" / "662" / "labeled.txt"
    lab_file.parent.mkdir(parents=True, exist_ok=True)
    lab_file.write_text("2007_000001\n2007_000004\n")
    seen = []
    real_fit = GLCC.fit

    def fit(self, X, areas, ids, sup, **k):
        seen.append((sup, self.config))
        return real_fit(self, X, areas, ids, sup, **k)

    monkeypatch.setattr(GLCC, "fit", fit)
    gen = GridGenerator()
    res = RecipeRunner(load_recipe("voc-semi-1-16", TINY + ["glcc.k=[5]"]), voc_root, tmp_path / "w",
                       mask_generator=gen, log=None).run()
    sup, cfg = seen[-1]
    assert isinstance(sup, SemiSupervision) and sup.zero_shot_scores is None and not sup.balance_semi
    ids = [f"2007_{i:06d}" for i in range(6)]
    assert sup.labeled_images.tolist() == [i in ("2007_000001", "2007_000004") for i in ids]
    assert cfg.alpha == 0.8 and cfg.k_bar == 3 and cfg.probe.sampler == "random"
    m = GLCC.load(res.paths["fit"])
    from tusss.data.store import EmbeddingStore

    meta = EmbeddingStore(res.paths["embed_train"]).metadata()
    lab_rows = np.isin(meta.image_id, ["2007_000001", "2007_000004"])
    np.testing.assert_array_equal(m.pstar_[lab_rows], meta.gt_frac[lab_rows])  # labelled rows = GT

    coco_style = load_recipe("voc-semi-1-16", TINY + ["glcc.k=[5]", "semi.start=ov", "semi.semi_balance=true",
                                                      "probe.sampler=semi_balance", "text.vocabulary=voc"])
    r2 = RecipeRunner(coco_style, voc_root, tmp_path / "w", mask_generator=gen, log=None)
    r2.run()
    sup2, cfg2 = seen[-1]
    assert sup2.balance_semi and cfg2.probe.sampler == "semi_balance"
    st = EmbeddingStore(r2.paths()["embed_train"])
    X, meta = st.embeddings(), st.metadata()
    seg = r2._ov_segmenter()
    logits = r2.clip().logits(X, seg.text_embeddings())
    for i in ids:
        rows = meta.image_id == i
        np.testing.assert_allclose(sup2.zero_shot_scores[rows], seg.score(logits[rows])[0], rtol=1e-5, atol=1e-7)
    assert gen.calls == 8  # the masks were made once


@pytest.mark.parametrize("command", ["run", "tune"])
def test_ray_options_reach_the_runner(command):
    """`tusss run|tune --ray ADDRESS --ray-actors N` -> RecipeRunner(ray=RayOptions(...)); without --ray: none."""
    from tusss.cli import build_parser
    from tusss.cli.run import _runner_kw
    from tusss.distributed import PoolConfig
    from tusss.recipes.runner import RayOptions

    base = [command, "--recipe", "voc-weak", "--root", "R", "--work", "W"]
    kw = _runner_kw(build_parser().parse_args([*base, "--ray", "10.0.0.1:6379", "--ray-actors", "3"]))
    assert kw["ray"] == RayOptions(address="10.0.0.1:6379", pool=PoolConfig(actors=3), num_cpus=None)
    kw = _runner_kw(build_parser().parse_args([*base, "--ray", "--ray-num-cpus", "2"]))
    assert kw["ray"].address is None and kw["ray"].num_cpus == 2
    assert "ray" not in _runner_kw(build_parser().parse_args(base))
