"""SAM model registry: ``vit_h`` / ``vit_l`` / ``vit_b`` (segment_anything's builders) + ``vit_tiny`` (tests).

``build_sam(model_type, checkpoint)`` returns ``(sam, weights_id)``:

* ``checkpoint="official"``: the official file is found (or downloaded once) by
  :func:`tusss.weights.resolve_checkpoint` under ``$TUSSS_HOME/sam/``;
* a path: that file is loaded (``torch.load(..., weights_only=True)``);
* ``None``: random weights, drawn from the caller's current torch RNG state.

``weights_id`` identifies the weights for cache keys (official file name, or name/size/partial sha256 of a
local file, or ``random:<sha256 of the parameters>``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from segment_anything.build_sam import sam_model_registry as _sa_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from tusss.errors import InputError
from tusss.persist import corrupt
from tusss.weights import resolve_checkpoint, state_dict_hash

SAM_URL_ROOT = "https://dl.fbaipublicfiles.com/segment_anything/"


def build_sam_vit_tiny() -> Sam:
    """A tiny SAM built from the real classes, for fast tests (about 0.3 M parameters).

    Image size 256 (16 x 16 tokens), ViT depth 2 / width 64 / 2 heads, window 8, global attention in
    block 1; prompt embedding 32; two-way transformer depth 2, width 32, MLP 64. Low-res masks are 64 x 64.
    """
    image_size, patch, prompt_dim = 256, 16, 32
    emb = image_size // patch
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=2,
            embed_dim=64,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=(1,),
            window_size=8,
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(emb, emb),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=64, num_heads=2),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.eval()
    return sam


@dataclass(frozen=True)
class SamSpec:
    """One entry of :data:`SAM_MODELS`: how to build the network and where its official weights live."""

    model_type: str
    builder: Callable[[], Sam]
    filename: str | None = None

    @property
    def url(self) -> str | None:
        return SAM_URL_ROOT + self.filename if self.filename else None


SAM_MODELS: dict[str, SamSpec] = {
    "vit_h": SamSpec("vit_h", _sa_registry["vit_h"], "sam_vit_h_4b8939.pth"),
    "vit_l": SamSpec("vit_l", _sa_registry["vit_l"], "sam_vit_l_0b3195.pth"),
    "vit_b": SamSpec("vit_b", _sa_registry["vit_b"], "sam_vit_b_01ec64.pth"),
    "vit_tiny": SamSpec("vit_tiny", build_sam_vit_tiny, None),
}

#: Same shape as segment_anything's ``sam_model_registry``: model type -> builder of a random-weight Sam.
sam_model_registry: dict[str, Callable[[], Sam]] = {k: v.builder for k, v in SAM_MODELS.items()}


def _spec(model_type: str) -> SamSpec:
    if model_type not in SAM_MODELS:
        raise InputError(f"unknown SAM model type {model_type!r}; choose one of {sorted(SAM_MODELS)}")
    return SAM_MODELS[model_type]


def resolve_sam_checkpoint(model_type: str, checkpoint: str | os.PathLike | None = "official") -> Path | None:
    """Local path of the weights asked for (``None`` for random weights); raises before any model is built.

    Raises:
        InputError: unknown model type, or ``"official"`` for a type without official weights.
        WeightsNotFoundError: the file is missing (message names the file, its URL and the destination).
    """
    spec = _spec(model_type)
    if checkpoint is None:
        return None
    if isinstance(checkpoint, str) and checkpoint == "official":
        if spec.filename is None:
            raise InputError(
                f"SAM model type {model_type!r} has no official checkpoint; pass checkpoint=None for random "
                "weights or the path of a state dict"
            )
        return resolve_checkpoint(spec.filename, url=spec.url, subdir="sam", what=f"SAM {model_type} checkpoint")
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise InputError(f"checkpoint must be 'official', a file path or None, got {type(checkpoint)}")
    return resolve_checkpoint(
        spec.filename or Path(checkpoint).name,
        path=checkpoint,
        url=spec.url,
        subdir="sam",
        what=f"SAM {model_type} checkpoint",
    )


def _file_id(path: Path) -> str:
    """Cheap identity of a weights file: name, size and sha256 of its first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            h.update(f.read())
    return f"file:{path.name}:{size}:{h.hexdigest()[:16]}"


def state_dict_id(model: torch.nn.Module) -> str:
    """``random:`` + the first 16 hex digits of :func:`tusss.weights.state_dict_hash` of ``model``."""
    return "random:" + state_dict_hash(model)[:16]


_CKPT_FIX = "delete the file so that it is downloaded again, or pass a good file with --checkpoint"


def _load_state_dict(path: Path, model_type: str) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated download, not a torch file, pickled code ...
        raise corrupt(path, f"cannot read the SAM {model_type} checkpoint ({type(e).__name__}: {e})", _CKPT_FIX) from e
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise corrupt(path, f"the SAM {model_type} checkpoint does not hold a state dict of tensors", _CKPT_FIX)
    return sd


def build_sam(
    model_type: str = "vit_h",
    checkpoint: str | os.PathLike | None = "official",
    device: str | torch.device = "cpu",
) -> tuple[Sam, str]:
    """Build a SAM network and load its weights; returns ``(sam in eval mode on device, weights_id)``.

    Raises:
        InputError: unknown model type, or a checkpoint whose tensors do not fit ``model_type``.
        WeightsNotFoundError: checkpoint file missing.
        CorruptFileError: checkpoint unreadable.
    """
    spec = _spec(model_type)
    path = resolve_sam_checkpoint(model_type, checkpoint)  # fail fast, before building a 600M-param model
    sd = _load_state_dict(path, model_type) if path is not None else None
    sam = spec.builder()
    if sd is not None:
        own = sam.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        wrong = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
        if missing or unexpected or wrong:
            raise InputError(
                f"checkpoint {path} does not fit SAM {model_type}: {len(missing)} missing keys {missing[:3]}, "
                f"{len(unexpected)} unexpected keys {unexpected[:3]}, {len(wrong)} shape mismatches {wrong[:3]} "
                "(wrong model_type for this file?)"
            )
        sam.load_state_dict(sd)
        weights_id = (
            f"official:{spec.filename}" if checkpoint == "official" else _file_id(path)  # type: ignore[arg-type]
        )
    else:
        weights_id = ""  # filled lazily by the caller (state_dict_id) when a cache key is needed
    sam.eval()
    sam.to(device)
    return sam, weights_id
