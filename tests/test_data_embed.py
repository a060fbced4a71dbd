"""tusss.data.embed: the one embed loop of `tusss embed` and the recipe runner (calls counted in both), against
naive per-image expectations: empty masks dropped with their indices kept, GT fractions from
tusss.labels.vote_fractions, images already stored skipped without a model call, a bad image recorded and skipped."""

from __future__ import annotations

import numpy as np
import pytest
from _tiny_datasets import grid_masks, make_voc

import tusss.data.embed as embed_mod
from tusss.data.datasets import get_dataset
from tusss.data.embed import embed_into_store, embed_or_empty, storable_masks
from tusss.data.store import EmbeddingStore, StoreWriter
from tusss.labels import vote_fractions
from tusss.masks.cache import MaskCache
from tusss.masks.maskset import MaskSet
from tusss.persist import FailureLog

D = 8


class FakeClip:
    """embed_masks -> per mask (mean of R, G, B over the mask, area, 1, ...): checkable by hand; calls counted."""

    def __init__(self) -> None:
        self.calls = 0

    def embed_masks(self, image: np.ndarray, masks: np.ndarray) -> np.ndarray:
        self.calls += 1
        out = np.ones((len(masks), D), np.float32)
        for m, mk in enumerate(masks):
            out[m, :3] = image[mk].mean(0) / 255.0
            out[m, 3] = mk.sum() / mk.size
        return out


def test_storable_masks_drops_the_empty_ones():
    base = grid_masks((10, 14))
    masks = np.concatenate([np.zeros((1, 10, 14), bool), base.masks[:2], np.zeros((2, 10, 14), bool),
                            base.masks[2:]])
    ms = MaskSet(masks, np.arange(len(masks)) % 3, np.linspace(0, 1, len(masks)), np.ones(len(masks)))
    sub, keep = storable_masks(ms)
    want = [m for m in range(len(masks)) if masks[m].any()]
    assert keep.tolist() == want and keep.dtype == np.int64
    np.testing.assert_array_equal(sub.masks, masks[want])
    np.testing.assert_array_equal(sub.predicted_iou, ms.predicted_iou[want])
    none, k0 = storable_masks(MaskSet(np.zeros((0, 4, 4), bool), np.zeros(0), np.zeros(0), np.zeros(0)))
    assert len(none) == 0 and k0.shape == (0,)
    assert embed_or_empty(FakeClip(), np.zeros((4, 4, 3), np.uint8), none.masks, D).shape == (0, D)


@pytest.fixture()
def voc(tmp_path):
    root = tmp_path / "VOC2012"
    ids = [f"2007_{i:06d}" for i in range(4)]
    make_voc(root, {"train_aug": ids})
    ds = get_dataset("voc", root, "train_aug")
    cache = MaskCache(tmp_path / "cache", "handmade")
    for n, i in enumerate(ids[:3]):  # the last image has no cached masks: a failure
        cache.put(i, grid_masks(ds.image(i).shape[:2], empty_one=n == 0))
    return ds, ids, cache


def test_embed_into_store_rows_resume_and_failures(voc, tmp_path):
    ds, ids, cache = voc
    clip = FakeClip()
    out = tmp_path / "store"
    w = StoreWriter(out, D, dtype="float32", num_classes=ds.num_classes, shard_size=1000)
    log, failed = FailureLog(out, "embed"), []
    n = embed_into_store(clip, ds, ids[:2], cache, w, log, with_gt=True, on_failure=lambda i, r: failed.append(i))
    w.close()
    assert n == 2 and clip.calls == 2 and failed == []
    w = StoreWriter(out, D, dtype="float32", num_classes=ds.num_classes, shard_size=1000)  # resumed
    n = embed_into_store(clip, ds, ids, cache, w, log, with_gt=True, on_failure=lambda i, r: failed.append(i))
    w.close()
    log.close()
    assert n == 1 and clip.calls == 3  # the two stored images were not embedded again
    assert failed == [ids[3]] and "has no masks" in log.failures[ids[3]]
    st = EmbeddingStore(out)
    assert st.image_ids == ids[:3]
    X, meta = st.embeddings(np.float32), st.metadata()
    for i in ids[:3]:  # each image's rows against a naive recomputation
        ms = cache.get(i)
        want = [m for m in range(len(ms)) if ms.masks[m].any()]
        rows = np.flatnonzero(meta.image_id == i)
        assert meta.mask_index[rows].tolist() == want
        np.testing.assert_allclose(X[rows], FakeClip().embed_masks(ds.image(i), ms.masks[want]), rtol=1e-6)
        np.testing.assert_allclose(meta.gt_frac[rows], vote_fractions(ms.masks[want], ds.label(i), ds.num_classes),
                                   rtol=1e-6)
        np.testing.assert_array_equal(meta.area[rows], ms.area[want])


def test_cli_embed_and_the_recipe_runner_use_it(monkeypatch, tmp_path):
    """Both callers go through embed_into_store (counted); neither keeps a loop of its own."""
    import inspect

    import tusss.cli.glcc as cli_glcc
    import tusss.recipes.runner as runner

    calls = []
    real = embed_mod.embed_into_store
    monkeypatch.setattr(embed_mod, "embed_into_store", lambda *a, **k: calls.append(1) or real(*a, **k))
    for fn in (cli_glcc.cmd_embed, runner.RecipeRunner.stage_embed):
        src = inspect.getsource(fn)
        assert "from tusss.data.embed import embed_into_store" in src and "embed_masks(" not in src
    from _tiny_datasets import make_voc as mk

    from tusss.cli import main

    root = tmp_path / "VOC2012"
    mk(root, {"train_aug": ["2007_000000", "2007_000001"]})
    ds = get_dataset("voc", root, "train_aug")
    cache = MaskCache(tmp_path / "cache", "handmade")
    for i in ds.ids:
        cache.put(i, grid_masks(ds.image(i).shape[:2]))
    rc = main(["embed", "--dataset", "voc", "--root", str(root), "--split", "train_aug", "--mask-cache",
               str(tmp_path / "cache"), "--out", str(tmp_path / "store"), "--clip", "tusss-tiny", "--weights",
               "random", "--clip-opt", "target_size=64", "--clip-opt", "window_sizes=[32]", "--clip-opt",
               "stride_divisor=1", "--no-progress"])
    assert rc == 0 and calls == [1] and EmbeddingStore(tmp_path / "store").image_ids == ds.ids
