"""Options and glue shared by the ``tusss`` subcommands.

Weight sources (``--checkpoint`` of SAM, ``--weights`` of CLIP) follow the one grammar of
:func:`tusss.weights.parse_weight_source`: ``official`` | ``openai`` | ``random`` | ``none`` | ``PATH``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tusss.errors import InputError
from tusss.weights import WEIGHT_SOURCE_HELP, parse_weight_source

__all__ = [
    "ImageSource",
    "add_clip_args",
    "add_common",
    "add_sam_args",
    "add_source_args",
    "build_clip",
    "build_generator",
    "image_items",
    "parse_opts",
    "progress",
]


def parse_opts(pairs: Sequence[str] | None, what: str) -> dict[str, Any]:
    """``["points_per_side=16", "score_nms_offset=[0,0,1]"]`` -> dict; values parsed as JSON when possible
    (JSON lists become tuples); ``-`` in keys becomes ``_``."""
    out: dict[str, Any] = {}
    for p in pairs or ():
        if "=" not in p:
            raise InputError(f"{what} option {p!r} must look like KEY=VALUE")
        k, v = p.split("=", 1)
        k = k.strip().replace("-", "_")
        try:
            val = json.loads(v)
        except json.JSONDecodeError:
            val = v
        if isinstance(val, list):
            val = tuple(val)
        out[k] = val
    return out


def progress(it: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    """A tqdm progress bar over ``it`` (disabled unless ``enabled``)."""
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, unit="img", disable=not enabled)


def image_items(inputs: Sequence[str]) -> list[tuple[str, Path]]:
    """(id, path) for image files and every image directly inside folders; id = file stem (unique)."""
    from tusss.io import MissingFileError, list_images

    items: list[tuple[str, Path]] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            items += [(q.stem, q) for q in list_images(p)]
        elif p.is_file():
            items.append((p.stem, p))
        else:
            raise MissingFileError(f"input {s!r} does not exist")
    seen: dict[str, Path] = {}
    for i, p in items:
        if i in seen and seen[i] != p:
            raise InputError(f"two inputs share the id {i!r}: {str(seen[i])!r} and {str(p)!r}")
        seen[i] = p
    if not seen:
        raise InputError(f"no images found in {list(inputs)}")
    return list(seen.items())


class ImageSource:
    """Uniform access to the images of a command: files/folders (``args.inputs``) or a dataset split
    (``args.dataset``, ``args.root``, ``args.split``, ``args.ids_file``); ``args.limit`` keeps the first N."""

    def __init__(self, args: argparse.Namespace, need_inputs: bool = True) -> None:
        from tusss.data.datasets import get_dataset

        self.dataset = None
        if getattr(args, "dataset", None):
            if getattr(args, "inputs", None):
                raise InputError("give either image paths or --dataset, not both")
            if not args.root:
                raise InputError("--dataset needs --root")
            self.dataset = get_dataset(args.dataset, args.root, args.split, ids_file=args.ids_file)
            self.ids = list(self.dataset.ids)
            self._paths: dict[str, Path] = {}
        else:
            if need_inputs and not getattr(args, "inputs", None):
                raise InputError("give image files/folders, or --dataset NAME --root DIR")
            items = image_items(args.inputs)
            self.ids = [i for i, _ in items]
            self._paths = dict(items)
        if getattr(args, "limit", None):
            self.ids = self.ids[: args.limit]

    def path(self, img_id: str) -> Path:
        """The image file of ``img_id``."""
        return self.dataset.image_path(img_id) if self.dataset is not None else self._paths[img_id]

    def image(self, img_id: str) -> np.ndarray:
        """``(H, W, 3) uint8`` RGB; MissingFileError / CorruptFileError name the file."""
        from tusss.io import read_image

        return self.dataset.image(img_id) if self.dataset is not None else read_image(self._paths[img_id])


def build_generator(args: argparse.Namespace) -> Any:
    """The :class:`tusss.masks.MaskGenerator` of ``--sam --checkpoint --preset --sam-opt --device`` (random
    weights drawn after ``torch.manual_seed(--seed)``)."""
    import torch

    from tusss.masks.generator import MaskGenerator

    torch.manual_seed(args.seed)
    return MaskGenerator.from_pretrained(args.sam, checkpoint=parse_weight_source(args.checkpoint), preset=args.preset,
                                         device=args.device, **parse_opts(args.sam_opt, "--sam-opt"))  # fmt: skip


def build_clip(
    model: str,
    weights: str | None,
    preset: str,
    device: str,
    clip_opt: Sequence[str] | None,
    seed: int,
) -> Any:
    """The :class:`tusss.clip.DBAClip` of ``--clip --weights --clip-preset --clip-opt`` (random weights drawn
    after ``torch.manual_seed(seed)``)."""
    import torch

    from tusss.clip.model import DBAClip

    torch.manual_seed(seed)
    return DBAClip.from_pretrained(model, weights=parse_weight_source(weights, official="openai"), preset=preset,
                                   device=device, **parse_opts(clip_opt, "--clip-opt"))  # fmt: skip


# ---------------------------------------------------------------------------------------------- options
def add_source_args(p: argparse.ArgumentParser) -> None:
    """Image files/folders or ``--dataset NAME --root DIR [--split --ids-file --limit]``."""
    p.add_argument("inputs", nargs="*", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    p.add_argument("--dataset", help="dataset name (voc, voc20, coco_object, coco_stuff, cityscapes, folder)")
    p.add_argument("--root", help="dataset root folder")
    p.add_argument("--split", default="val", help="dataset split (default: val)")
    p.add_argument("--ids-file", help="only the ids listed in this file")
    p.add_argument("--limit", type=int, help="only the first N images")


def add_sam_args(p: argparse.ArgumentParser) -> None:
    """``--sam --checkpoint --preset --sam-opt``."""
    g = p.add_argument_group("SAM masks")
    g.add_argument("--sam", default="vit_h", help="SAM model type: vit_h (reference), vit_l, vit_b, vit_tiny")
    g.add_argument("--checkpoint", default="official", help=f"SAM weights: {WEIGHT_SOURCE_HELP}")
    g.add_argument("--preset", default="tuss", help="mask preset: tuss (docs/reference-code.md §1) or sam")
    g.add_argument("--sam-opt", action="append", metavar="KEY=VALUE",
                   help="override a MaskGenConfig field, e.g. points_per_side=16 (repeatable)")


def add_clip_args(p: argparse.ArgumentParser, title: str | None = "DBA-CLIP") -> None:
    """``--clip --weights --clip-preset --clip-opt``."""
    g = p.add_argument_group(title) if title else p
    g.add_argument("--clip", default="ViT-B-16", help="open_clip model (ViT-B-16; tusss-tiny for tests)")
    g.add_argument("--weights", default="openai", help=f"CLIP weights: {WEIGHT_SOURCE_HELP}")
    g.add_argument("--clip-preset", default="reference", help="DBA-CLIP preset (reference, paper, maskclip, ...)")
    g.add_argument("--clip-opt", action="append", metavar="KEY=VALUE", help="override a DBAClipConfig field")


def add_common(p: argparse.ArgumentParser) -> None:
    """``--device --seed --no-progress``."""
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="torch seed for random weights (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
