"""Embedding store: round trip, sharding, resume after interruption, corrupt/empty stores, GT fractions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tusss.data.store import EmbeddingStore, StoreWriter, gt_class_fractions
from tusss.errors import CorruptFileError, InputError


def images(n=7, d=8, K=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        M = int(rng.integers(1, 6))
        g = rng.random((M, K)).astype(np.float32)
        out.append((f"img{i}", rng.normal(size=(M, d)).astype(np.float32), rng.integers(1, 100, M),
                    rng.integers(0, 3, M), g / g.sum(1, keepdims=True)))
    return out


def write(root, ims, **kw):
    with StoreWriter(root, 8, num_classes=3, **kw) as w:
        for iid, e, a, lv, g in ims:
            if iid in w.done():
                continue
            w.add(iid, e, area=a, level=lv, gt_fractions=g)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_sharded(tmp_path, dtype):
    ims = images()
    write(tmp_path / "s", ims, shard_size=6, dtype=dtype)
    st = EmbeddingStore(tmp_path / "s")
    E = np.concatenate([x[1] for x in ims])
    assert len(st.shards) > 1 and st.num_rows == len(E) and st.image_ids == [x[0] for x in ims]
    np.testing.assert_allclose(st.embeddings(), E.astype(dtype).astype(np.float32))
    assert isinstance(st.shard(0), np.memmap)
    m = st.metadata()
    np.testing.assert_array_equal(m.area, np.concatenate([x[2] for x in ims]))
    np.testing.assert_array_equal(m.level, np.concatenate([x[3] for x in ims]))
    np.testing.assert_allclose(m.gt_frac, np.concatenate([x[4] for x in ims]))
    assert m.image_id.tolist() == [x[0] for x in ims for _ in range(len(x[1]))]
    assert m.mask_index.tolist() == [j for x in ims for j in range(len(x[1]))]
    n = sum(e.shape[0] for e, _ in st.iter_shards())
    assert n == len(E)


def test_resume_after_interrupt(tmp_path):
    ims = images()
    root = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(root, 8, num_classes=3, shard_size=6) as w:
            for k, (iid, e, a, lv, g) in enumerate(ims):
                if k == 5:
                    raise KeyboardInterrupt
                w.add(iid, e, area=a, level=lv, gt_fractions=g)
    with pytest.raises(CorruptFileError, match="incomplete"):
        EmbeddingStore(root)
    part = EmbeddingStore(root, require_complete=False)
    assert not list(root.glob("*.tmp"))
    done = set(part.image_ids)
    assert done and done < {x[0] for x in ims}
    w = StoreWriter(root, 8, num_classes=3, shard_size=6)
    assert w.done() == done
    with pytest.raises(InputError, match="already"):
        w.add(next(iter(done)), ims[0][1], area=ims[0][2], gt_fractions=ims[0][4])
    for iid, e, a, lv, g in ims:
        if iid not in w.done():
            w.add(iid, e, area=a, level=lv, gt_fractions=g)
    w.close()
    st = EmbeddingStore(root)
    assert sorted(st.image_ids) == sorted(x[0] for x in ims)
    by_id = {x[0]: x[1] for x in ims}
    m = st.metadata()
    E = st.embeddings()
    for iid in by_id:
        # default dtype float32 (as the authors store embeddings): stored exactly
        np.testing.assert_array_equal(E[m.image_id == iid], by_id[iid].astype(np.float32))


def test_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        EmbeddingStore(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(CorruptFileError, match="index.json"):
        EmbeddingStore(tmp_path / "d")
    StoreWriter(tmp_path / "e", 8).close()
    with pytest.raises(InputError, match="empty"):
        EmbeddingStore(tmp_path / "e")
    write(tmp_path / "c", images(3))
    (tmp_path / "c" / "index.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="JSON"):
        EmbeddingStore(tmp_path / "c")
    write(tmp_path / "v", images(3))
    idx = json.loads((tmp_path / "v" / "index.json").read_text())
    idx["version"] = 99
    (tmp_path / "v" / "index.json").write_text(json.dumps(idx))
    with pytest.raises(CorruptFileError, match="version"):
        EmbeddingStore(tmp_path / "v")
    write(tmp_path / "t", images(3))
    (tmp_path / "t" / "emb_00000.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(CorruptFileError):
        EmbeddingStore(tmp_path / "t").embeddings()
    w = StoreWriter(tmp_path / "w", 8, num_classes=3)
    with pytest.raises(InputError, match="NaN"):
        w.add("a", np.full((2, 8), np.nan), area=[1, 2], gt_fractions=np.zeros((2, 3)))
    with pytest.raises(InputError, match=r"\(M, 8\)"):
        w.add("a", np.zeros((2, 7)), area=[1, 2], gt_fractions=np.zeros((2, 3)))
    with pytest.raises(InputError, match="gt_fractions"):
        w.add("a", np.zeros((2, 8)), area=[1, 2])
    with pytest.raises(InputError, match="dim"):
        StoreWriter(tmp_path / "w", 16, num_classes=3)


def test_gt_class_fractions_by_hand():
    gt = np.array([[0, 0, 1, 255], [2, 2, 1, 255]], np.uint8)
    masks = np.zeros((3, 2, 4), bool)
    masks[0, 0, :3] = True  # 0, 0, 1
    masks[1, :, 2:] = True  # 1, 255, 1, 255
    masks[2, :, 3] = True  # all ignore
    f = gt_class_fractions(masks, gt, 3)
    np.testing.assert_allclose(f, [[2 / 3, 1 / 3, 0], [0, 1, 0], [0, 0, 0]])
    with pytest.raises(InputError):
        gt_class_fractions(masks, np.full((2, 4), 7), 3)
