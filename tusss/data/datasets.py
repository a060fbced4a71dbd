"""Readers for the standard on-disk layouts of the evaluation datasets (docs/reference-code.md §7).

All readers share one API (:class:`SegDataset`): ``ids``, ``len()``, ``image(id) -> (H, W, 3) uint8``,
``label(id) -> (H, W) uint8 | None`` (255 = ignore), ``class_names``, ``num_classes``,
``image_classes(id)`` (image-level labels computed from the GT) and :func:`get_dataset` to build one by name.

Layouts (``root`` is the folder named first):

* ``voc`` (aliases ``voc21``, ``voc2012``): ``VOC2012/`` (or ``VOCdevkit/`` holding it) with
  ``JPEGImages/{id}.jpg``, ``SegmentationClass/{id}.png`` (palette PNG) and/or
  ``SegmentationClassAug/{id}.png`` (SBD, grey PNG), lists ``ImageSets/Segmentation/{split}.txt``;
  ``train_aug`` (10,582 ids) is also looked up in ``ImageSets/SegmentationAug/`` and ``root/``.
  21 classes, 0 = background.
* ``voc20``: the same files; background pixels become 255 and the other labels shift by -1 (20 classes).
* ``coco_object`` (``coco_obj``): COCO-2017 images ``images/{split}2017/{id}.jpg`` (or ``{split}2017/``),
  UniMatch-style 81-class masks ``masks/{split}2017/{id}.png`` (or ``third_party/masks/{split}2017/``);
  0 = background, ids = the mask files (or an ``ids_file``).
* ``coco_stuff`` (``cocostuff``, ``coco_stuff164k``): ``images/{split}2017/{id}.jpg`` and
  ``annotations/{split}2017/{id}_labelTrainIds.png``; 171 classes, no background.
* ``cityscapes`` (``cs``): ``leftImg8bit/{split}/{city}/{id}_leftImg8bit.png`` and
  ``gtFine/{split}/{city}/{id}_gtFine_labelTrainIds.png``; 19 classes, no background; id =
  ``{city}_{seq}_{frame}``.
* ``folder``: every image directly in ``root`` (no labels; ``split`` is ignored).

An ``ids_file`` (one id per line; UniMatch lines such as ``train2017/x.jpg masks/train2017/x.png`` and
paths are reduced to the file stem) restricts any dataset to a subset, e.g. a semi-supervised split.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tusss.data.classes import (
    CITYSCAPES_CLASSES,
    COCO_OBJECT_CLASSES,
    COCO_STUFF_CLASSES,
    VOC_CLASSES,
)
from tusss.errors import CorruptFileError, InputError
from tusss.io import IMAGE_EXTENSIONS, MissingFileError, read_image, read_label

IGNORE_INDEX = 255


__all__ = [
    "CITYSCAPES_CLASSES",
    "COCO_OBJECT_CLASSES",
    "COCO_STUFF_CLASSES",
    "DATASETS",
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "CityscapesDataset",
    "CocoObjectDataset",
    "CocoStuffDataset",
    "ImageFolderDataset",
    "SegDataset",
    "Voc20Dataset",
    "VocDataset",
    "get_dataset",
    "read_ids_file",
]


def _need_dir(p: Path, what: str) -> Path:
    if not p.is_dir():
        raise MissingFileError(f"{what} {str(p)!r} does not exist (or is not a folder)")
    return p


def read_ids_file(path: str | os.PathLike) -> list[str]:
    """Ids listed in a text file, one per line; the first token of a line is reduced to its file stem
    (``train2017/000000000139.jpg masks/...`` -> ``000000000139``). Blank lines and ``#`` comments skipped."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"id list file {str(p)!r} does not exist")
    ids: list[str] = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tok = line.split()[0]
        if "/" in tok or "." in os.path.basename(tok):
            tok = Path(tok).stem
        ids.append(tok)
    if not ids:
        raise InputError(f"id list file {str(p)!r} is empty")
    return ids


class SegDataset:
    """Base class: a split of a semantic-segmentation dataset on disk.

    Subclasses set ``name``, ``class_names``, ``has_background`` and implement :meth:`image_path` and
    :meth:`label_path`; :meth:`_convert_label` may remap raw labels (VOC20).
    """

    name: str = "dataset"
    class_names: tuple[str, ...] = ()
    has_background: bool = False
    ignore_index: int = IGNORE_INDEX
    _raw_num_classes: int | None = None  # K of the label files when _convert_label remaps them

    def __init__(self, root: str | os.PathLike, split: str, ids: list[str]) -> None:
        self.root = Path(root)
        self.split = split
        self.ids: list[str] = list(ids)
        self._index = {i: n for n, i in enumerate(self.ids)}
        self._cls_cache: dict[str, np.ndarray] = {}

    # --- API ---------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """K, the number of classes (labels lie in [0, K) or equal 255)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __contains__(self, img_id: object) -> bool:
        return img_id in self._index

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"

    def _check_id(self, img_id: str) -> None:
        if img_id not in self._index:
            raise InputError(f"id {img_id!r} is not in {self.name} split {self.split!r} ({len(self)} images)")

    def image_path(self, img_id: str) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    def label_path(self, img_id: str) -> Path | None:  # pragma: no cover - abstract
        """Path of the GT PNG, or None when the split has no labels."""
        raise NotImplementedError

    def image(self, img_id: str) -> np.ndarray:
        """The image ``(H, W, 3) uint8`` RGB."""
        self._check_id(img_id)
        return read_image(self.image_path(img_id))

    def label(self, img_id: str) -> np.ndarray | None:
        """The GT label map ``(H, W) uint8`` with values in [0, K) or 255, or None for unlabelled splits."""
        self._check_id(img_id)
        p = self.label_path(img_id)
        if p is None:
            return None
        raw = read_label(p)
        k = self._raw_num_classes or self.num_classes
        bad = (raw >= k) & (raw != self.ignore_index)
        if bad.any():
            v = int(raw[bad][0])
            raise CorruptFileError(f"label {str(p)!r} holds value {v}, outside [0, {k}) and not {self.ignore_index}")
        return self._convert_label(raw)

    def _convert_label(self, raw: np.ndarray) -> np.ndarray:
        return raw

    def image_classes(self, img_id: str, fg_index: bool = False) -> np.ndarray | None:
        """Image-level labels: sorted ``int64`` class ids present in the GT (255 ignored), without the
        background class 0 when the dataset has one. None when the split has no labels.

        ``fg_index=True`` returns foreground indices instead (class id - 1 when the dataset has a background
        class), the ``fg_cls`` argument of :func:`tusss.scoring.seed_on_logits`.
        """
        if img_id not in self._cls_cache:
            lab = self.label(img_id)
            if lab is None:
                return None
            present = np.flatnonzero(np.bincount(lab.reshape(-1), minlength=256)[: self.num_classes])
            if self.has_background:
                present = present[present != 0]
            self._cls_cache[img_id] = present.astype(np.int64)
        out = self._cls_cache[img_id].copy()
        return out - 1 if fg_index and self.has_background else out

    def image_class_matrix(self) -> np.ndarray:
        """``(N, K) bool`` image-level label matrix over :attr:`ids` (reads every label once)."""
        out = np.zeros((len(self), self.num_classes), bool)
        for n, i in enumerate(self.ids):
            c = self.image_classes(i)
            if c is None:
                raise InputError(f"{self.name} split {self.split!r} has no labels for image-level classes")
            out[n, c] = True
        return out


# --- PASCAL VOC ------------------------------------------------------------------------------------
class VocDataset(SegDataset):
    """PASCAL VOC 2012 (21 classes, 0 = background) with the SBD ``train_aug`` split."""

    name = "voc"
    class_names = VOC_CLASSES
    has_background = True

    def __init__(self, root: str | os.PathLike, split: str = "val", ids_file: str | os.PathLike | None = None):
        r = Path(root)
        if not r.is_dir():
            raise MissingFileError(f"{self.name} dataset root {str(r)!r} does not exist")
        for sub in ("VOC2012", "VOCdevkit/VOC2012"):
            if not (r / "JPEGImages").is_dir() and (r / sub / "JPEGImages").is_dir():
                r = r / sub
        _need_dir(r / "JPEGImages", f"{self.name} image folder")
        if ids_file is not None:
            ids = read_ids_file(ids_file)
        else:
            cands = [r / "ImageSets" / "Segmentation" / f"{split}.txt", r / "ImageSets" / "SegmentationAug" /
                     f"{split}.txt", r / f"{split}.txt"]  # fmt: skip
            found = next((c for c in cands if c.is_file()), None)
            if found is None:
                raise MissingFileError(
                    f"{self.name} split {split!r}: no list file; looked for " + ", ".join(repr(str(c)) for c in cands)
                )
            ids = read_ids_file(found)
        super().__init__(r, split, ids)
        self.labelled = split != "test"
        aug_first = "aug" in split
        dirs = ["SegmentationClassAug", "SegmentationClass"] if aug_first else ["SegmentationClass",
                                                                               "SegmentationClassAug"]  # fmt: skip
        self._label_dirs = [r / d for d in dirs if (r / d).is_dir()]
        if self.labelled and not self._label_dirs:
            self.labelled = False  # images only (e.g. a test-like copy without GT)

    def image_path(self, img_id: str) -> Path:
        p = self.root / "JPEGImages" / f"{img_id}.jpg"
        if not p.is_file():
            raise MissingFileError(f"{self.name} image {str(p)!r} (id {img_id!r}) does not exist")
        return p

    def label_path(self, img_id: str) -> Path | None:
        if not self.labelled:
            return None
        for d in self._label_dirs:
            p = d / f"{img_id}.png"
            if p.is_file():
                return p
        raise MissingFileError(
            f"{self.name} label for id {img_id!r} not found in " + ", ".join(repr(str(d)) for d in self._label_dirs)
        )


class Voc20Dataset(VocDataset):
    """VOC without background: background pixels -> 255, class c -> c - 1 (20 classes)."""

    name = "voc20"
    class_names = VOC_CLASSES[1:]
    has_background = False
    _raw_num_classes = len(VOC_CLASSES)

    def _convert_label(self, raw: np.ndarray) -> np.ndarray:
        out = raw.astype(np.int16) - 1
        out[(raw == 0) | (raw == IGNORE_INDEX)] = IGNORE_INDEX
        return out.astype(np.uint8)


# --- COCO ------------------------------------------------------------------------------------------
def _coco_split(split: str) -> str:
    s = split[:-4] if split.endswith("2017") else split
    if s not in ("train", "val", "test"):
        raise InputError(f"COCO split must be 'train', 'val' or 'test' (optionally with '2017'), got {split!r}")
    return s


def _stems(folder: Path, suffix: str) -> list[str]:
    return sorted(p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix))


class _CocoBase(SegDataset):
    _label_dir_cands: tuple[str, ...] = ()
    _label_suffix = ".png"

    def __init__(self, root: str | os.PathLike, split: str = "val", ids_file: str | os.PathLike | None = None):
        r = Path(root)
        if not r.is_dir():
            raise MissingFileError(f"{self.name} dataset root {str(r)!r} does not exist")
        s = _coco_split(split)
        img_cands = [r / "images" / f"{s}2017", r / f"{s}2017"]
        img_dir = next((c for c in img_cands if c.is_dir()), None)
        if img_dir is None:
            raise MissingFileError(
                f"{self.name} image folder not found; looked for " + ", ".join(repr(str(c)) for c in img_cands)
            )
        lab_cands = [r / c.format(s=s) for c in self._label_dir_cands]
        self._label_dir = next((c for c in lab_cands if c.is_dir()), None)
        if ids_file is not None:
            ids = read_ids_file(ids_file)
        elif self._label_dir is not None:
            ids = _stems(self._label_dir, self._label_suffix)
        else:
            ids = sorted(p.stem for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not ids:
            raise InputError(f"{self.name} split {split!r} under {str(r)!r} holds no images")
        super().__init__(r, s, ids)
        self._img_dir = img_dir

    def image_path(self, img_id: str) -> Path:
        for ext in (".jpg", ".png", ".jpeg"):
            p = self._img_dir / f"{img_id}{ext}"
            if p.is_file():
                return p
        raise MissingFileError(f"{self.name} image {str(self._img_dir / (img_id + '.jpg'))!r} does not exist")

    def label_path(self, img_id: str) -> Path | None:
        if self._label_dir is None:
            return None
        p = self._label_dir / f"{img_id}{self._label_suffix}"
        if not p.is_file():
            raise MissingFileError(f"{self.name} label {str(p)!r} (id {img_id!r}) does not exist")
        return p


class CocoObjectDataset(_CocoBase):
    """COCO-Object: COCO-2017 images, 81 classes (0 = background, 1..80 things), UniMatch-style masks."""

    name = "coco_object"
    class_names = COCO_OBJECT_CLASSES
    has_background = True
    _label_dir_cands = ("masks/{s}2017", "third_party/masks/{s}2017")


class CocoStuffDataset(_CocoBase):
    """COCO-Stuff-164k: 171 classes (``*_labelTrainIds.png``), no background."""

    name = "coco_stuff"
    class_names = COCO_STUFF_CLASSES
    has_background = False
    _label_dir_cands = ("annotations/{s}2017",)
    _label_suffix = "_labelTrainIds.png"


# --- Cityscapes ------------------------------------------------------------------------------------
class CityscapesDataset(SegDataset):
    """Cityscapes fine annotations, 19 train ids (255 ignore)."""

    name = "cityscapes"
    class_names = CITYSCAPES_CLASSES
    has_background = False
    _img_suffix = "_leftImg8bit.png"
    _lab_suffix = "_gtFine_labelTrainIds.png"

    def __init__(self, root: str | os.PathLike, split: str = "val", ids_file: str | os.PathLike | None = None):
        r = Path(root)
        if not r.is_dir():
            raise MissingFileError(f"{self.name} dataset root {str(r)!r} does not exist")
        if split not in ("train", "val", "test", "train_extra"):
            raise InputError(f"cityscapes split must be train, val or test, got {split!r}")
        img_dir = _need_dir(r / "leftImg8bit" / split, f"{self.name} image folder")
        if ids_file is not None:
            ids = read_ids_file(ids_file)
            ids = [i[: -len("_leftImg8bit")] if i.endswith("_leftImg8bit") else i for i in ids]
        else:
            ids = sorted(
                p.name[: -len(self._img_suffix)] for p in img_dir.glob(f"*/*{self._img_suffix}")
            )
        if not ids:
            raise InputError(f"{self.name} split {split!r}: no *{self._img_suffix} files under {str(img_dir)!r}")
        super().__init__(r, split, ids)
        self._lab_dir = r / "gtFine" / split
        self.labelled = self._lab_dir.is_dir() and split != "test"

    @staticmethod
    def _city(img_id: str) -> str:
        return img_id.split("_")[0]

    def image_path(self, img_id: str) -> Path:
        p = self.root / "leftImg8bit" / self.split / self._city(img_id) / f"{img_id}{self._img_suffix}"
        if not p.is_file():
            raise MissingFileError(f"{self.name} image {str(p)!r} does not exist")
        return p

    def label_path(self, img_id: str) -> Path | None:
        if not self.labelled:
            return None
        p = self._lab_dir / self._city(img_id) / f"{img_id}{self._lab_suffix}"
        if not p.is_file():
            raise MissingFileError(f"{self.name} label {str(p)!r} does not exist")
        return p


# --- plain folder ----------------------------------------------------------------------------------
class ImageFolderDataset(SegDataset):
    """Every image directly inside a folder; id = file stem; no labels, no classes."""

    name = "folder"
    class_names = ()

    def __init__(self, root: str | os.PathLike, split: str = "", ids_file: str | os.PathLike | None = None):
        r = Path(root)
        if not r.is_dir():
            raise MissingFileError(f"image folder {str(r)!r} does not exist")
        files = sorted(p for p in r.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        self._paths: dict[str, Path] = {}
        for p in files:
            if p.stem in self._paths:
                raise InputError(f"image folder {str(r)!r} holds two images with id {p.stem!r}")
            self._paths[p.stem] = p
        ids = read_ids_file(ids_file) if ids_file is not None else list(self._paths)
        if not ids:
            raise InputError(f"image folder {str(r)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        super().__init__(r, split, ids)

    def image_path(self, img_id: str) -> Path:
        p = self._paths.get(img_id)
        if p is None or not p.is_file():
            raise MissingFileError(f"image {img_id!r} not found in folder {str(self.root)!r}")
        return p

    def label_path(self, img_id: str) -> Path | None:
        return None


DATASETS: dict[str, type[SegDataset]] = {
    "voc": VocDataset,
    "voc21": VocDataset,
    "voc2012": VocDataset,
    "voc20": Voc20Dataset,
    "coco_object": CocoObjectDataset,
    "coco_obj": CocoObjectDataset,
    "coco_stuff": CocoStuffDataset,
    "cocostuff": CocoStuffDataset,
    "coco_stuff164k": CocoStuffDataset,
    "cityscapes": CityscapesDataset,
    "cs": CityscapesDataset,
    "folder": ImageFolderDataset,
}


def get_dataset(
    name: str, root: str | os.PathLike, split: str = "val", ids_file: str | os.PathLike | None = None
) -> SegDataset:
    """Open split ``split`` of dataset ``name`` (see the module docstring for names and layouts).

    Raises InputError for an unknown name or split, MissingFileError (an InputError) for a missing root,
    list file or image folder.
    """
    key = name.lower().replace("-", "_")
    cls = DATASETS.get(key)
    if cls is None:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return cls(root, split, ids_file=ids_file)
