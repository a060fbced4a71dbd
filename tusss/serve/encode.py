"""What the HTTP services send back: COCO RLE masks, per-mask JSON rows, label-map PNG and ``.npy`` bytes.

Shared by ``tusss serve`` (:mod:`tusss.serve.app`) and the Ray Serve deployment (:mod:`tusss.distributed.serve`);
no web framework is imported here.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

__all__ = ["mask_rows", "npy_bytes", "png_bytes", "rle_encode"]


def rle_encode(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLE of (M, H, W) bool masks exactly as pycocotools writes it (``{"size": [H, W], "counts": str}``,
    compressed counts string)."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(np.transpose(masks, (1, 2, 0)).astype(np.uint8)))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]


def png_bytes(label_map: np.ndarray) -> bytes:
    """(H, W) uint8 / integer label map as PNG bytes: 8-bit grey, or 16-bit grey when a label exceeds 255."""
    from PIL import Image

    buf = io.BytesIO()
    if label_map.dtype == np.uint8:
        Image.fromarray(label_map, mode="L").save(buf, format="PNG")
    else:
        Image.fromarray(label_map.astype(np.uint16)).save(buf, format="PNG")  # 16-bit grey for K > 255
    return buf.getvalue()


def npy_bytes(a: np.ndarray) -> bytes:
    """``np.save`` bytes of ``a`` (no pickles)."""
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def mask_rows(ms: Any, extra: dict[str, np.ndarray] | None = None, class_names: Any = None) -> list[dict]:
    """Per-mask JSON rows of a :class:`tusss.masks.maskset.MaskSet` (``extra``: per-mask ``labels`` and ``conf``
    arrays, with ``class_names`` the names of the labels); ``bbox`` is COCO's XYWH of the mask (pycocotools
    ``toBbox``: w = x_max - x_min + 1)."""
    from pycocotools import mask as mask_utils

    rles = rle_encode(ms.masks)
    boxes = mask_utils.toBbox([{"size": r["size"], "counts": r["counts"].encode()} for r in rles]) if rles else []
    rows = []
    for i in range(len(ms)):
        d = {"id": i, "segmentation": rles[i], "bbox": [int(v) for v in boxes[i]], "area": int(ms.area[i]),
             "level": int(ms.level[i]), "predicted_iou": float(ms.predicted_iou[i]),
             "stability": float(ms.stability[i])}
        if extra is not None:
            lab = int(extra["labels"][i])
            d.update(label=lab, **({"class": class_names[lab]} if class_names is not None else {}),
                     score=float(extra["conf"][i]))
        rows.append(d)
    return rows
