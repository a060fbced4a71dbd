"""Class vocabularies of the authors' configs (docs/reference-code.md §4).

Sources: CLIP-ES ``clip_text.py`` (github linyq2117/CLIP-ES: ``new_class_names``, ``BACKGROUND_CATEGORY``,
``BACKGROUND_CATEGORY_COCO``) and SCLIP ``configs/cls_coco_object.txt``, ``cls_coco_stuff.txt``,
``cls_city_scapes.txt`` (github wangf3014/SCLIP). A comma-separated name is one prompt string.

Background modes:
- ``"explicit"``: text column 0 is the word 'background' and maps to dataset class 0.
- ``"dustbin"``: extra background names follow the fg names; they map to no class (column_class -1); the
  background score of class 0 is derived later from the fg scores (docs/reference-code.md §5).
- ``"none"``: no background class.
"""

from __future__ import annotations

from dataclasses import dataclass

from tusss.data.classes import CITYSCAPES_CLASSES, COCO_OBJECT_CLASSES, COCO_STUFF_CLASSES, COCO_THINGS, VOC_CLASSES
from tusss.errors import InputError

# CLIP-ES new_class_names (VOC, 20 fg names with synonyms)
VOC_CLIP_ES_NAMES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird avian", "boat", "bottle",
    "bus", "car", "cat", "chair seat", "cow",
    "diningtable", "dog", "horse", "motorbike", "person with clothes,people,human",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor screen",
)
# CLIP-ES BACKGROUND_CATEGORY (25 names)
VOC_BG_NAMES: tuple[str, ...] = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea",
    "railway", "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock",
    "street", "valley", "bridge", "sign",
)
# CLIP-ES BACKGROUND_CATEGORY_COCO (23 names: VOC list minus keyboard / sign)
COCO_BG_NAMES: tuple[str, ...] = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea",
    "railway", "railroad", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street",
    "valley", "bridge",
)
# SCLIP cls_coco_object.txt lines 2..81 (line 1 is SCLIP's own background line, replaced by COCO_BG_NAMES): the
# 80 COCO thing names, the first one with SCLIP's person synonyms
COCO_OBJECT_SCLIP_NAMES: tuple[str, ...] = (
    "person, person in shirt, person in jeans, person in dress, person in sweater, person in skirt, "
    "person in jacket, body",
    *COCO_THINGS[1:],
)
# SCLIP cls_coco_stuff.txt (171 names)
COCO_STUFF_SCLIP_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "trafficlight",
    "firehydrant", "stopsign", "parkingmeter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sportsball", "kite", "baseballbat", "baseballglove", "skateboard", "surfboard",
    "tennisracket", "bottle", "wineglass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hotdog", "pizza", "donut", "cake", "chair", "couch",
    "pottedplant", "bed", "diningtable", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cellphone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddybear", "hairdrier", "toothbrush", "banner", "blanket", "branch", "bridge", "building-other",
    "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes",
    "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal",
    "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other",
    "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
    "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
    "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood",
    "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
# SCLIP cls_city_scapes.txt (19 names, as written there)
CITYSCAPES_SCLIP_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "trafficlight", "trafficsign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)


@dataclass(frozen=True)
class Vocabulary:
    """Text-encoder names of a dataset and how their columns map to dataset classes.

    Attributes:
        name: vocabulary id.
        names: strings fed to the text encoder (one column of the text classifier each).
        num_classes: K, number of dataset classes (background included when the dataset has one).
        bg_mode: ``"explicit"`` / ``"dustbin"`` / ``"none"`` (module docstring).
        num_fg: number of foreground names (the first ``num_fg`` names, after 'background' when explicit).
        templates: default template set name.
        class_names: dataset class display names, length K.
        column_class: dataset class of each name column (-1 for dustbin background names).
        bg_class: dataset class id of the background (0) or None.
        ignore_index: label value ignored by evaluation (255).
        bg_pixels_ignored: the dataset maps background pixels to ``ignore_index`` (VOC20).
    """

    name: str
    names: tuple[str, ...]
    num_classes: int
    bg_mode: str
    num_fg: int
    templates: str
    class_names: tuple[str, ...]
    column_class: tuple[int, ...]
    bg_class: int | None
    ignore_index: int = 255
    bg_pixels_ignored: bool = False

    @property
    def fg_columns(self) -> tuple[int, ...]:
        """Name columns of the foreground classes."""
        start = 1 if self.bg_mode == "explicit" else 0
        return tuple(range(start, start + self.num_fg))

    @property
    def dustbin_columns(self) -> tuple[int, ...]:
        """Name columns of dustbin background names (empty unless ``bg_mode == "dustbin"``)."""
        return tuple(range(self.num_fg, len(self.names))) if self.bg_mode == "dustbin" else ()


def _dustbin(name: str, fg: tuple[str, ...], bg: tuple[str, ...], classes: tuple[str, ...], tmpl: str):
    return Vocabulary(name, fg + bg, len(fg) + 1, "dustbin", len(fg), tmpl, classes,
                      tuple(range(1, len(fg) + 1)) + (-1,) * len(bg), 0)


def _plain(name: str, fg: tuple[str, ...], classes: tuple[str, ...], tmpl: str, **kw: object):
    return Vocabulary(name, fg, len(fg), "none", len(fg), tmpl, classes, tuple(range(len(fg))), None, **kw)


VOCABULARIES: dict[str, Vocabulary] = {
    "voc": _dustbin("voc", VOC_CLIP_ES_NAMES, VOC_BG_NAMES, VOC_CLASSES, "vild"),
    "voc21": Vocabulary("voc21", ("background", *VOC_CLIP_ES_NAMES), 21, "explicit", 20, "origami",
                        VOC_CLASSES, tuple(range(21)), 0),
    "voc20": _plain("voc20", VOC_CLIP_ES_NAMES, VOC_CLASSES[1:], "origami", bg_pixels_ignored=True),
    "coco-object": _dustbin("coco-object", COCO_OBJECT_SCLIP_NAMES, COCO_BG_NAMES, COCO_OBJECT_CLASSES, "vild"),
    "coco-stuff": _plain("coco-stuff", COCO_STUFF_SCLIP_NAMES, COCO_STUFF_CLASSES, "vild"),
    # the authors' cs_names.ori_names (with spaces: 'traffic light', 'traffic sign'); SCLIP's spelling below
    "cityscapes": _plain("cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_CLASSES, "vild"),
    "cityscapes-sclip": _plain("cityscapes-sclip", CITYSCAPES_SCLIP_NAMES, CITYSCAPES_CLASSES, "vild"),
    # VOC21 open vocabulary, DBA-tree val_ov variant: the 20 fg names only (no dustbins, no 'background'
    # word); the background score is derived, bg = (1 - max_c s_c) ** p ("pow")
    "voc21-pow": _dustbin("voc21-pow", VOC_CLIP_ES_NAMES, (), VOC_CLASSES, "origami"),
}


def get_vocabulary(name: str) -> Vocabulary:
    """The named vocabulary (``voc``, ``voc21``, ``voc20``, ``coco-object``, ``coco-stuff``, ``cityscapes``)."""
    if name not in VOCABULARIES:
        raise InputError(f"unknown vocabulary {name!r}; known vocabularies: {sorted(VOCABULARIES)}")
    return VOCABULARIES[name]
