"""Build tiny datasets on disk in the standard layouts read by :mod:`tusss.data.datasets`.

Every builder returns ``{split: {id: (image, label)}}`` with the exact arrays written (``image`` is what a
lossless reader returns for PNG images; JPEG images are lossy, so compare those with PIL's own decoding).
Labels are blocky random class maps with a 255 border, like VOC.

Usable from any test (pytest puts tests/ on sys.path)::

    from _tiny_datasets import make_voc
    truth = make_voc(tmp_path / "VOC2012", {"val": ["a", "b"]})
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tusss.io import voc_palette

Truth = dict[str, dict[str, tuple[np.ndarray, np.ndarray | None]]]


def blocky_label(
    rng: np.random.Generator, hw: tuple[int, int], classes: np.ndarray | list[int], border: bool = True
) -> np.ndarray:
    """(H, W) uint8 map made of 2-4 random rectangles of ``classes`` over ``classes[0]``; 255 border
    (1 pixel wide around each rectangle) when ``border``."""
    h, w = hw
    classes = np.asarray(classes)
    lab = np.full((h, w), classes[0], np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        y0, x0 = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        y1, x1 = int(rng.integers(y0 + 3, h + 1)), int(rng.integers(x0 + 3, w + 1))
        c = int(rng.choice(classes))
        if border:
            lab[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = 255
        lab[y0:y1, x0:x1] = c
    return lab


def random_image(rng: np.random.Generator, hw: tuple[int, int], label: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 smooth-ish image; regions of ``label`` get distinct base colours (helps SAM)."""
    h, w = hw
    img = rng.integers(0, 40, (h, w, 3)).astype(np.int32)
    if label is not None:
        base = (voc_palette()[label.astype(np.int64) % 256]).astype(np.int32)
        img = img + base * 3 // 4
    return np.clip(img, 0, 255).astype(np.uint8)


def _save_png(path: Path, arr: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        im = Image.fromarray(arr, mode="P")
        im.putpalette(voc_palette().reshape(-1).tolist())
    else:
        im = Image.fromarray(arr)
    im.save(path)


def _save_jpg(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)


def make_voc(
    root: str | Path,
    splits: dict[str, list[str]] | None = None,
    hw: tuple[int, int] = (20, 28),
    seed: int = 0,
    aug_splits: tuple[str, ...] = ("train_aug",),
) -> Truth:
    """PASCAL VOC 2012 layout under ``root`` (= the ``VOC2012`` folder).

    Splits named in ``aug_splits`` get their list in ``ImageSets/SegmentationAug/`` and grey labels in
    ``SegmentationClassAug/``; the others a list in ``ImageSets/Segmentation/`` and palette labels in
    ``SegmentationClass/``; split ``test`` gets no labels. Labels hold 0..20 and 255.
    """
    root = Path(root)
    splits = splits if splits is not None else {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]}
    rng = np.random.default_rng(seed)
    truth: Truth = {}
    for split, ids in splits.items():
        aug = split in aug_splits
        lst = root / "ImageSets" / ("SegmentationAug" if aug else "Segmentation") / f"{split}.txt"
        lst.parent.mkdir(parents=True, exist_ok=True)
        lst.write_text("".join(f"{i}\n" for i in ids))
        truth[split] = {}
        for i in ids:
            lab = blocky_label(rng, hw, [0, *rng.choice(np.arange(1, 21), 3, replace=False).tolist()])
            img = random_image(rng, hw, lab)
            _save_jpg(root / "JPEGImages" / f"{i}.jpg", img)
            if split == "test":
                truth[split][i] = (img, None)
                continue
            if aug:
                _save_png(root / "SegmentationClassAug" / f"{i}.png", lab)
            else:
                _save_png(root / "SegmentationClass" / f"{i}.png", lab, palette=True)
            truth[split][i] = (img, lab)
    return truth


def _coco_ids(n: int, start: int) -> list[str]:
    return [f"{start + 7 * k:012d}" for k in range(n)]


def make_coco_object(
    root: str | Path,
    splits: dict[str, int] | None = None,
    hw: tuple[int, int] = (18, 26),
    seed: int = 1,
    mask_dir: str = "masks",
) -> Truth:
    """COCO-Object layout: ``images/{s}2017/{id}.jpg`` + ``{mask_dir}/{s}2017/{id}.png`` (grey, 0..80, 255)."""
    root = Path(root)
    splits = splits if splits is not None else {"train": 2, "val": 2}
    rng = np.random.default_rng(seed)
    truth: Truth = {}
    for n_s, (split, n) in enumerate(splits.items()):
        truth[split] = {}
        for i in _coco_ids(n, 139 + 1000 * n_s):
            lab = blocky_label(rng, hw, [0, *rng.choice(np.arange(1, 81), 3, replace=False).tolist()])
            img = random_image(rng, hw, lab)
            _save_jpg(root / "images" / f"{split}2017" / f"{i}.jpg", img)
            _save_png(root / mask_dir / f"{split}2017" / f"{i}.png", lab)
            truth[split][i] = (img, lab)
    return truth


def make_coco_stuff(
    root: str | Path, splits: dict[str, int] | None = None, hw: tuple[int, int] = (18, 26), seed: int = 2
) -> Truth:
    """COCO-Stuff-164k layout: ``images/{s}2017/{id}.jpg`` + ``annotations/{s}2017/{id}_labelTrainIds.png``
    (0..170, 255)."""
    root = Path(root)
    splits = splits if splits is not None else {"train": 2, "val": 2}
    rng = np.random.default_rng(seed)
    truth: Truth = {}
    for n_s, (split, n) in enumerate(splits.items()):
        truth[split] = {}
        for i in _coco_ids(n, 285 + 1000 * n_s):
            lab = blocky_label(rng, hw, rng.choice(np.arange(0, 171), 4, replace=False).tolist())
            img = random_image(rng, hw, lab)
            _save_jpg(root / "images" / f"{split}2017" / f"{i}.jpg", img)
            _save_png(root / "annotations" / f"{split}2017" / f"{i}_labelTrainIds.png", lab)
            truth[split][i] = (img, lab)
    return truth


def make_cityscapes(
    root: str | Path,
    splits: dict[str, list[str]] | None = None,
    hw: tuple[int, int] = (16, 32),
    seed: int = 3,
) -> Truth:
    """Cityscapes layout: ``leftImg8bit/{s}/{city}/{id}_leftImg8bit.png`` + ``gtFine/{s}/{city}/
    {id}_gtFine_labelTrainIds.png`` (0..18, 255); ids look like ``frankfurt_000000_000294``."""
    root = Path(root)
    splits = splits if splits is not None else {
        "train": ["aachen_000000_000019", "bochum_000000_000313"],
        "val": ["frankfurt_000000_000294", "lindau_000001_000019", "frankfurt_000001_000538"],
    }  # fmt: skip
    rng = np.random.default_rng(seed)
    truth: Truth = {}
    for split, ids in splits.items():
        truth[split] = {}
        for i in ids:
            city = i.split("_")[0]
            lab = blocky_label(rng, hw, rng.choice(np.arange(0, 19), 4, replace=False).tolist())
            img = random_image(rng, hw, lab)
            _save_png(root / "leftImg8bit" / split / city / f"{i}_leftImg8bit.png", img)
            _save_png(root / "gtFine" / split / city / f"{i}_gtFine_labelTrainIds.png", lab)
            truth[split][i] = (img, lab)
    return truth


def make_image_folder(
    root: str | Path, n: int = 2, hw: tuple[int, int] = (24, 32), seed: int = 4
) -> dict[str, np.ndarray]:
    """``n`` PNG images ``img{k}.png`` directly in ``root``; returns ``{id: image}``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    out = {}
    for k in range(n):
        lab = blocky_label(rng, hw, [0, 5, 9, 12], border=False)
        img = random_image(rng, hw, lab)
        _save_png(root / f"img{k}.png", img)
        out[f"img{k}"] = img
    return out


def grid_masks(hw: tuple[int, int], empty_one: bool = False):
    """Hand-made masks for an image of size ``hw``: its 5 x 7 pixel blocks (levels 0, 1, 2 in turn), plus one
    empty mask at the end when ``empty_one`` (stores drop it)."""
    from tusss.masks.maskset import MaskSet

    h, w = hw
    ms = []
    for y in range(0, h, 5):
        for x in range(0, w, 7):
            m = np.zeros(hw, bool)
            m[y:y + 5, x:x + 7] = True
            ms.append(m)
    if empty_one:
        ms.append(np.zeros(hw, bool))
    M = len(ms)
    return MaskSet(np.stack(ms), np.arange(M) % 3, np.ones(M), np.ones(M))
