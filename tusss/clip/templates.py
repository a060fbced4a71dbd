"""Prompt template sets (docs/reference-code.md §4, ``configs/addon/clip_templates.py``).

- ``"vild"``: the 14 ViLD templates (SAN / ov-seg ``VILD_PROMPT``); default for training-set scoring and
  COCO-Object / COCO-Stuff / Cityscapes open vocabulary.
- ``"origami"``: the single template "a clean origami {}." (VOC21 / VOC20 open vocabulary).
- ``"imagenet"``: the 80 CLIP ImageNet templates (defined, unused by the final configs).
"""

from __future__ import annotations

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from tusss.errors import InputError

VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

ORIGAMI_TEMPLATES: tuple[str, ...] = ("a clean origami {}.",)

IMAGENET_TEMPLATES: tuple[str, ...] = tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "vild": VILD_TEMPLATES,
    "origami": ORIGAMI_TEMPLATES,
    "imagenet": IMAGENET_TEMPLATES,
}


def get_templates(templates: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Resolve a template-set name, a single template containing ``{}``, or a list of such templates."""
    if isinstance(templates, str):
        if templates in TEMPLATE_SETS:
            return TEMPLATE_SETS[templates]
        if "{}" in templates:
            return (templates,)
        raise InputError(
            f"unknown template set {templates!r}; known sets: {sorted(TEMPLATE_SETS)} "
            "(or pass templates containing '{}')"
        )
    if not isinstance(templates, (list, tuple)) or not templates:
        raise InputError(f"templates must be a set name or a non-empty list of strings, got {templates!r}")
    for t in templates:
        if not isinstance(t, str) or "{}" not in t:
            raise InputError(f"every template must be a string containing '{{}}', got {t!r}")
    return tuple(templates)
