"""`tusss embed | fit | predict | pseudo-label` on a tiny VOC layout (tusss-tiny CLIP, random weights,
hand-made cached masks). References: DBAClip.embed_masks in-process, GLCC.load(...).predict, vote fractions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _tiny_datasets import grid_masks, make_voc
from segment_anything.utils.amg import batched_mask_to_box, box_xyxy_to_xywh

from tusss.cli import main
from tusss.clip.model import DBAClip
from tusss.data.datasets import get_dataset
from tusss.data.store import EmbeddingStore
from tusss.glcc.model import GLCC
from tusss.io import read_label
from tusss.labels import vote_fractions
from tusss.masks.cache import MaskCache

CLIP_OPTS = ["target_size=64", "window_sizes=[32]", "stride_divisor=1"]


def clip_args():
    out = ["--clip", "tusss-tiny", "--weights", "random"]
    for o in CLIP_OPTS:
        out += ["--clip-opt", o]
    return out


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("glcc_cli")
    root = tmp / "VOC2012"
    make_voc(root, {"train_aug": [f"2007_{i:06d}" for i in range(6)], "val": ["2008_000001", "2008_000002"]})
    cache = MaskCache(tmp / "cache", "handmade")
    for split in ("train_aug", "val"):
        ds = get_dataset("voc", root, split)
        for n, i in enumerate(ds.ids):
            cache.put(i, grid_masks(ds.image(i).shape[:2], empty_one=n == 0))
    return tmp, root


def test_embed_fit_predict_pseudo_label(voc):
    tmp, root = voc
    for split in ("train_aug", "val"):
        rc = main(["embed", "--dataset", "voc", "--root", str(root), "--split", split, "--mask-cache",
                   str(tmp / "cache"), "--out", str(tmp / f"store_{split}"), "--dtype", "float32",
                   "--shard-size", "40", "--no-progress", *clip_args()])
        assert rc == 0
    st = EmbeddingStore(tmp / "store_train_aug")
    meta = st.metadata()
    ds = get_dataset("voc", root, "train_aug")
    torch.manual_seed(0)
    clip = DBAClip.from_pretrained("tusss-tiny", weights=None, target_size=64, window_sizes=[32], stride_divisor=1)
    i0 = ds.ids[0]
    ms = MaskCache(tmp / "cache", "handmade").get(i0)
    keep = np.flatnonzero(ms.masks.reshape(len(ms), -1).any(1))
    assert len(keep) == len(ms) - 1  # the empty mask is skipped
    ref = clip.embed_masks(ds.image(i0), ms.masks[keep])
    rows = meta.image_id == i0
    np.testing.assert_allclose(st.embeddings()[rows], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(meta.mask_index[rows], keep)
    np.testing.assert_allclose(meta.gt_frac[rows], vote_fractions(ms.masks[keep], ds.label(i0), 21))

    # resumable: a second run embeds nothing (no DBA-CLIP call), writes no shard and changes no byte of the store
    def snapshot(d):
        return {q: (q.read_bytes(), None if q.name == "index.json" else q.stat().st_mtime_ns)
                for q in d.rglob("*") if q.is_file()}  # fmt: skip

    store_files = snapshot(tmp / "store_train_aug")
    calls = []
    real = DBAClip.embed_masks

    def counting(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DBAClip, "embed_masks", counting)
        rc = main(["embed", "--dataset", "voc", "--root", str(root), "--split", "train_aug", "--mask-cache",
                   str(tmp / "cache"), "--out", str(tmp / "store_train_aug"), "--dtype", "float32", "--shard-size",
                   "40", "--no-progress", *clip_args()])  # fmt: skip
    assert rc == 0 and calls == []
    assert snapshot(tmp / "store_train_aug") == store_files
    # the counter does see embedding work: a store missing one image embeds exactly that image
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DBAClip, "embed_masks", counting)
        rc = main(["embed", "--dataset", "voc", "--root", str(root), "--split", "train_aug", "--mask-cache",
                   str(tmp / "cache"), "--out", str(tmp / "store_part"), "--dtype", "float32", "--limit", "1",
                   "--no-progress", *clip_args()])  # fmt: skip
        assert rc == 0 and len(calls) == 1
        rc = main(["embed", "--dataset", "voc", "--root", str(root), "--split", "train_aug", "--mask-cache",
                   str(tmp / "cache"), "--out", str(tmp / "store_part"), "--dtype", "float32", "--limit", "2",
                   "--no-progress", *clip_args()])  # fmt: skip
        assert rc == 0 and len(calls) == 2

    model = tmp / "model"
    assert main(["fit", "--store", str(tmp / "store_train_aug"), "--supervision", "full", "--out", str(model),
                 "--k", "5", "--probe-iters", "30", "--no-progress"]) == 0
    assert main(["predict", "--model", str(model), "--store", str(tmp / "store_val"), "--mask-cache",
                 str(tmp / "cache"), "--out", str(tmp / "pred"), "--no-progress"]) == 0
    m = GLCC.load(model)
    vs = EmbeddingStore(tmp / "store_val")
    vm = vs.metadata()
    scores = m.predict(vs.embeddings())
    for i in vs.image_ids:
        js = json.loads((tmp / "pred" / "masks" / f"{i}.json").read_text())
        assert [d["label"] for d in js["masks"]] == scores[vm.image_id == i].argmax(1).tolist()
        assert read_label(tmp / "pred" / "labels" / f"{i}.png").shape == (20, 28)
        # the per-mask schema of `tusss segment`, with each record describing its cached mask (naive numpy)
        cached = MaskCache(tmp / "cache", "handmade").get(i).masks[vm.mask_index[vm.image_id == i]]
        assert js["id"] == i and js["image_hw"] == [20, 28] and js["num_masks"] == len(cached) == len(js["masks"])
        boxes = [box_xyxy_to_xywh(b).tolist() for b in batched_mask_to_box(torch.from_numpy(cached))]  # SAM's
        for rec, mk, box in zip(js["masks"], cached, boxes):
            assert set(rec) == {"index", "label", "class", "conf", "level", "area", "bbox_xywh", "predicted_iou"}
            assert rec["area"] == int(mk.sum()) and rec["class"] == js["class_names"][rec["label"]]
            assert rec["bbox_xywh"] == box
    assert main(["eval", "--dataset", "voc", "--root", str(root), "--split", "val", "--pred", str(tmp / "pred"),
                 "--no-progress"]) == 0
    assert main(["pseudo-label", "--model", str(model), "--store", str(tmp / "store_train_aug"), "--mask-cache",
                 str(tmp / "cache"), "--out", str(tmp / "pl"), "--no-progress"]) == 0
    for i in ds.ids:
        lab = read_label(tmp / "pl" / "SegmentationClassAug" / f"{i}.png")
        present = set(np.unique(ds.label(i)).tolist()) | {0}
        assert set(np.unique(lab).tolist()) <= present  # restricted to the image's classes

    # weak supervision through the CLI (text side of the tiny CLIP, voc dustbin vocabulary)
    assert main(["fit", "--store", str(tmp / "store_train_aug"), "--supervision", "weak", "--out",
                 str(tmp / "model_weak"), "--k", "5", "--probe-iters", "20", "--weights", "random",
                 "--no-progress"]) == 0
    assert GLCC.load(tmp / "model_weak").kind_ == "weak"


def test_cli_errors(voc, tmp_path, capsys):
    tmp, root = voc
    assert main(["fit", "--store", str(tmp_path / "none"), "--supervision", "full", "--out", str(tmp_path / "m")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "none"), "--store", str(tmp_path), "--mask-cache",
                 str(tmp / "cache"), "--out", str(tmp_path / "p")]) == 1
