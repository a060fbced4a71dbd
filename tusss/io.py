"""Image and label-PNG reading/writing, colour palettes and overlays.

Everything returns plain numpy arrays: images are ``(H, W, 3) uint8`` RGB, label maps ``(H, W) uint8``
(255 = ignore). Missing files raise :class:`MissingFileError` (an :class:`~tusss.errors.InputError` that is
also a ``FileNotFoundError``); files that exist but cannot be decoded raise
:class:`~tusss.errors.CorruptFileError` (for images :class:`UnreadableImageError`, also an ``InputError``:
a bad input image is both). All name the file. :func:`read_image` is the one image reader of tusss.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tusss.errors import CorruptFileError, InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

__all__ = [
    "IMAGE_EXTENSIONS",
    "MissingFileError",
    "UnreadableImageError",
    "list_images",
    "overlay",
    "read_image",
    "read_label",
    "voc_palette",
    "write_image",
    "write_label_png",
]


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder the caller named (image, label, dataset root, list file) does not exist."""


class UnreadableImageError(CorruptFileError, InputError):
    """An image file exists but cannot be decoded (truncated, not an image, unusable mode)."""


def _check_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        if p.exists():
            raise InputError(f"{what} {str(p)!r} is not a file")
        raise MissingFileError(f"{what} {str(p)!r} does not exist")
    return p


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``(H, W, 3) uint8`` RGB (grey, palette, RGBA, CMYK and 16-bit are converted).

    EXIF orientation is ignored on purpose: dataset ground truth is aligned with the stored pixels.
    """
    p = _check_file(path, "image")
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: keep the high byte
                a = np.asarray(im).astype(np.int64)
                a = np.clip(a // 257 if im.mode != "I" or a.max() > 255 else a, 0, 255).astype(np.uint8)
                arr = np.repeat(a[:, :, None], 3, axis=2)
            else:
                arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UnreadableImageError(f"image {str(p)!r} cannot be decoded: {e}") from e
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise UnreadableImageError(f"image {str(p)!r} decoded to an unusable array of shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def read_label(path: str | os.PathLike, palette: np.ndarray | None = None) -> np.ndarray:
    """Read a label PNG as ``(H, W) uint8`` class indices.

    Palette ("P") and grey ("L") PNGs give their stored indices; 16/32-bit grey PNGs must hold values
    <= 255. RGB label images are mapped back to indices through ``palette`` (default: :func:`voc_palette`);
    a colour not in the palette raises CorruptFileError.
    """
    p = _check_file(path, "label")
    try:
        with Image.open(p) as im:
            im.load()
            mode = im.mode
            if mode in ("P", "L", "1"):
                arr = np.asarray(im if mode != "1" else im.convert("L"))
                if mode == "1":
                    arr = (arr > 0).astype(np.uint8)
            elif mode in ("I", "I;16", "I;16B", "I;16L"):
                arr = np.asarray(im).astype(np.int64)
                if arr.size and (arr.min() < 0 or arr.max() > 255):
                    raise CorruptFileError(
                        f"label {str(p)!r} holds values outside 0..255 (min {arr.min()}, max {arr.max()})"
                    )
            elif mode in ("RGB", "RGBA"):
                arr = _rgb_to_index(np.asarray(im.convert("RGB")), palette, p)
            else:
                raise CorruptFileError(f"label {str(p)!r} has unsupported PNG mode {mode!r}")
    except CorruptFileError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptFileError(f"label {str(p)!r} cannot be decoded: {e}") from e
    if arr.ndim != 2:
        raise CorruptFileError(f"label {str(p)!r} decoded to shape {arr.shape}, expected (H, W)")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _rgb_to_index(rgb: np.ndarray, palette: np.ndarray | None, path: Path) -> np.ndarray:
    pal = voc_palette() if palette is None else np.asarray(palette, np.uint8).reshape(-1, 3)
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pcode = (pal[:, 0].astype(np.int64) << 16) | (pal[:, 1].astype(np.int64) << 8) | pal[:, 2]
    # first palette index wins for duplicated colours
    uniq, first = np.unique(pcode, return_index=True)
    pos = np.searchsorted(uniq, code)
    pos = np.clip(pos, 0, len(uniq) - 1)
    ok = uniq[pos] == code
    if not ok.all():
        bad = rgb[~ok][0].tolist()
        raise CorruptFileError(f"label {str(path)!r} is RGB and holds colour {bad} that is not in the palette")
    return first[pos].astype(np.uint8)


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: ``(n, 3) uint8`` (index 0 black, 255 = (224, 224, 192))."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def _check_label_map(label: np.ndarray, name: str = "label") -> np.ndarray:
    if not isinstance(label, np.ndarray) or label.ndim != 2:
        raise InputError(f"{name} must be a (H, W) integer array, got {getattr(label, 'shape', type(label))}")
    if not np.issubdtype(label.dtype, np.integer):
        raise InputError(f"{name} must have an integer dtype, got {label.dtype}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise InputError(f"{name} values must lie in 0..255 to be stored as a PNG, got {label.min()}..{label.max()}")
    return label.astype(np.uint8, copy=False)


def write_label_png(path: str | os.PathLike, label: np.ndarray, palette: np.ndarray | None = None) -> Path:
    """Write ``label`` ``(H, W)`` (values 0..255) as an indexed PNG with ``palette`` (default VOC colours).

    Reading it back with :func:`read_label` returns the same indices. Parent folders are created.
    """
    lab = _check_label_map(label)
    pal = voc_palette() if palette is None else np.asarray(palette, np.uint8).reshape(-1, 3)
    full = np.zeros((256, 3), np.uint8)
    full[: min(256, len(pal))] = pal[:256]
    p = Path(path)
    im = Image.fromarray(lab, mode="P")
    im.putpalette(full.reshape(-1).tolist())
    _atomic_pil_save(im, p)
    return p


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an ``(H, W, 3) uint8`` RGB image (format from the suffix). Parent folders are created."""
    from tusss.validate import check_image

    img = check_image(image)
    p = Path(path)
    _atomic_pil_save(Image.fromarray(img), p)
    return p


def _atomic_pil_save(im: Image.Image, p: Path) -> None:
    """``im.save(p)`` through :func:`tusss.persist.atomic_write` (same bytes; never a half-written file)."""
    from tusss.persist import atomic_write

    fmt = Image.registered_extensions().get(p.suffix.lower())
    if fmt is None:
        raise InputError(f"cannot write image {str(p)!r}: unknown image file extension {p.suffix!r}")
    with atomic_write(p, "wb") as f:
        im.save(f, format=fmt)


def overlay(
    image: np.ndarray,
    label: np.ndarray,
    palette: np.ndarray | None = None,
    alpha: float = 0.5,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """Blend the palette colours of ``label`` (H, W) over ``image`` (H, W, 3) uint8; returns (H, W, 3) uint8.

    ``out = (1 - alpha) * image + alpha * palette[label]``; pixels equal to ``ignore_index`` keep the image.
    """
    from tusss.validate import check_image

    img = check_image(image)
    lab = _check_label_map(label)
    if lab.shape != img.shape[:2]:
        raise InputError(f"label has size {lab.shape} but the image is {img.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must lie in [0, 1], got {alpha}")
    pal = voc_palette() if palette is None else np.asarray(palette, np.uint8).reshape(-1, 3)
    full = np.zeros((256, 3), np.uint8)
    full[: min(256, len(pal))] = pal[:256]
    col = full[lab].astype(np.float32)
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * col
    if ignore_index is not None:
        keep = lab == ignore_index
        out[keep] = img[keep]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def list_images(folder: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """Sorted image files directly inside ``folder`` (by suffix, case-insensitive)."""
    d = Path(folder)
    if not d.is_dir():
        raise MissingFileError(f"image folder {str(d)!r} does not exist")
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in extensions)
