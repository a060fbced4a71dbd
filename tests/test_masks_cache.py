"""MaskCache (atomic .npz per image, config-hash keyed) and cache_masks (resumable)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tusss.errors import CorruptFileError, InputError
from tusss.masks import CacheMismatchError, MaskCache, MaskGenerator, MaskSet, cache_masks


def random_maskset(seed: int, hw: tuple[int, int] = (13, 21), m: int = 5) -> MaskSet:
    rng = np.random.default_rng(seed)
    masks = rng.random((m, *hw)) < 0.4
    return MaskSet(
        masks=masks,
        level=rng.integers(0, 3, m),
        predicted_iou=rng.random(m),
        stability=rng.random(m),
        point_coords=rng.random((m, 2)) * 10,
        crop_box=rng.integers(0, 9, (m, 4)),
    )


def assert_equal_masksets(a: MaskSet, b: MaskSet) -> None:
    for k in ("masks", "level", "predicted_iou", "stability", "area", "bbox", "crop_box", "point_coords"):
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == y.dtype, k
        np.testing.assert_array_equal(x, y, err_msg=k)


def test_round_trip_and_ids(tmp_path: Path) -> None:
    c = MaskCache(tmp_path / "c", "h1")
    ids = ["a", "city/aachen_000000_000019", "deep/er/x.png", "weird %id", ".hidden", "..", "ü"]
    sets = {i: random_maskset(n) for n, i in enumerate(ids)}
    assert c.ids() == [] and "a" not in c and c.get("a") is None
    for i, s in sets.items():
        p = c.put(i, s)
        assert p.is_file() and p.resolve().is_relative_to((tmp_path / "c").resolve())
    assert sorted(c.ids()) == sorted(ids) and len(c) == len(ids)
    for i, s in sets.items():
        assert i in c
        assert_equal_masksets(c.get(i), s)
    empty = MaskSet.empty((4, 5))
    c.put("empty", empty)
    assert len(c.get("empty")) == 0 and c.get("empty").image_hw == (4, 5)
    # no temporary files left behind
    assert not [f for f in (tmp_path / "c").rglob(".*") if f.is_file()]


@pytest.mark.parametrize("bad", ["", "a//b", "/abs", "trail/", 3])
def test_bad_ids(tmp_path: Path, bad) -> None:
    with pytest.raises(InputError):
        MaskCache(tmp_path, "h").put(bad, random_maskset(0))


def test_atomic_write_crash_leaves_old_file(tmp_path: Path, monkeypatch) -> None:
    c = MaskCache(tmp_path, "h1")
    old = random_maskset(1)
    c.put("x", old)

    def crash(*a, **k):  # the process dies while numpy is writing the archive
        f = a[0]
        f.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(KeyboardInterrupt):
        c.put("x", random_maskset(2))
    with pytest.raises(KeyboardInterrupt):
        c.put("new/y", random_maskset(3))
    monkeypatch.undo()
    assert_equal_masksets(c.get("x"), old)  # previous version intact
    assert "new/y" not in c and c.get("new/y") is None  # no half-written file
    assert c.ids() == ["x"]
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["x.npz"]


def test_hash_mismatch(tmp_path: Path) -> None:
    MaskCache(tmp_path, "aaaa1111").put("x", random_maskset(1))
    other = MaskCache(tmp_path, "bbbb2222")
    for op in (lambda: other.get("x"), lambda: "x" in other, lambda: other.put("x", random_maskset(2))):
        with pytest.raises(CacheMismatchError) as ei:
            op()
        msg = str(ei.value)
        assert "aaaa1111" in msg and "bbbb2222" in msg and "overwrite=True" in msg and "x.npz" in msg
    ow = MaskCache(tmp_path, "bbbb2222", overwrite=True)
    assert "x" not in ow and ow.get("x") is None
    new = random_maskset(2)
    ow.put("x", new)
    assert_equal_masksets(other.get("x"), new)


@pytest.mark.parametrize("how", ["garbage", "truncated", "no_hash"])
def test_corrupt_file(tmp_path: Path, how: str) -> None:
    c = MaskCache(tmp_path, "h1")
    p = c.put("img/1", random_maskset(1, hw=(64, 64), m=8))
    if how == "garbage":
        p.write_bytes(b"\x00garbage")
    elif how == "truncated":
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    else:
        with p.open("wb") as f:
            np.savez_compressed(f, masks_packed=np.zeros(3, np.uint8))
    with pytest.raises(CorruptFileError, match="1.npz"):
        c.get("img/1")
    # a corrupt file may be replaced by a fresh put
    c.put("img/1", random_maskset(2))
    assert_equal_masksets(c.get("img/1"), random_maskset(2))


# ----------------------------------------------------------------------------------------------- cache_masks


class CountingGenerator:
    """Stands in for MaskGenerator (cache_masks only needs config_hash and generate)."""

    config_hash = "gen-hash"

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def generate(self, image: np.ndarray) -> MaskSet:
        self.calls.append(image.shape[:2])
        m = np.zeros((1, *image.shape[:2]), bool)
        m[0, 0, 0] = True
        return MaskSet(m, [2], [0.9], [0.95])


def test_cache_masks_resumes_and_reads_sources(tmp_path: Path) -> None:
    img = np.zeros((6, 7, 3), np.uint8)
    Image.fromarray(np.full((5, 4, 3), 9, np.uint8)).save(tmp_path / "f.png")
    loaded = []

    def lazy() -> np.ndarray:
        loaded.append(1)
        return np.zeros((3, 3, 3), np.uint8)

    items = [("arr", img), ("file", tmp_path / "f.png"), ("c/lazy", lazy)]
    cache = MaskCache(tmp_path / "cache", "gen-hash")
    gen = CountingGenerator()
    out = cache_masks(gen, items[:2], cache, progress=False)
    assert out == {"generated": ["arr", "file"], "skipped": [], "failed": {}}
    out = cache_masks(gen, items, cache, progress=False)  # resume: only the new id is computed
    assert out["generated"] == ["c/lazy"] and out["skipped"] == ["arr", "file"]
    assert gen.calls == [(6, 7), (5, 4), (3, 3)] and loaded == [1]
    assert cache.get("file").image_hw == (5, 4)


def test_cache_masks_errors(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path / "cache", "gen-hash")
    gen = CountingGenerator()
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    items = [("ok", np.zeros((2, 2, 3), np.uint8)), ("bad", tmp_path / "bad.jpg"), ("gone", tmp_path / "no.png")]
    with pytest.raises(InputError, match="bad.jpg"):
        cache_masks(gen, items, cache, progress=False)
    with pytest.warns(UserWarning, match="2 image"):
        out = cache_masks(gen, items, cache, progress=False, on_error="collect")
    assert set(out["failed"]) == {"bad", "gone"} and "no.png" in out["failed"]["gone"]
    assert cache.ids() == ["ok"]
    with pytest.raises(InputError, match="uint8"):
        cache_masks(gen, [("f", np.zeros((2, 2, 3), np.float32))], cache, progress=False)
    with pytest.raises(CacheMismatchError):
        cache_masks(gen, items, MaskCache(tmp_path / "c2", "other"), progress=False)


def test_cache_with_real_generator(tmp_path: Path) -> None:
    torch.manual_seed(0)
    gen = MaskGenerator.from_pretrained(
        "vit_tiny", None, preset="sam", points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    cache = MaskCache.for_generator(tmp_path, gen)
    img = (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)
    cache_masks(gen, [("a/b", img)], cache, progress=False)
    assert_equal_masksets(cache.get("a/b"), gen.generate(img))
    torch.manual_seed(1)  # other random weights -> other hash -> refused
    gen2 = MaskGenerator.from_pretrained("vit_tiny", None, preset="sam")
    with pytest.raises(CacheMismatchError):
        MaskCache.for_generator(tmp_path, gen2).get("a/b")
    assert os.path.isfile(cache.path("a/b"))
