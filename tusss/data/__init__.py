"""Dataset readers (datasets.py) and the embedding store (store.py)."""

from tusss.data.datasets import (
    CITYSCAPES_CLASSES,
    COCO_OBJECT_CLASSES,
    COCO_STUFF_CLASSES,
    DATASETS,
    IGNORE_INDEX,
    VOC_CLASSES,
    SegDataset,
    get_dataset,
    read_ids_file,
)

__all__ = [
    "CITYSCAPES_CLASSES",
    "COCO_OBJECT_CLASSES",
    "COCO_STUFF_CLASSES",
    "DATASETS",
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "SegDataset",
    "get_dataset",
    "read_ids_file",
]
