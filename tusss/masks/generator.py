"""`MaskGenerator`: SAM automatic mask generation with levels, level offsets and the RSW filter
(docs/reference-code.md §1).

Built on segment_anything's ``SamAutomaticMaskGenerator``: its crop/grid/NMS/RLE utilities and its
``_generate_masks`` / ``postprocess_small_regions`` are reused unchanged; only the per-batch filtering and
the per-crop NMS score are changed (the level tags and offsets), as TUSS's ``SamAuto`` does. Two speed-ups
that do not change the output (tested against ``SamAutomaticMaskGenerator``): the predicted-IoU filter runs
before the low-res logits are up-sampled to the image size, and RLE encoding is linear in the mask count
(:func:`mask_to_rle_fast`).

Pipeline for one image (``generate``):
1. crops = full image + ``crop_n_layers`` layers of crops; per crop, the point grid in batches;
2. per batch: SAM's 3 multimask outputs per point, tagged level 0/1/2 (sub-part, part, whole);
   keep iff ``predicted_iou + score_thresh_offset[level] > pred_iou_thresh`` and
   ``stability + stability_score_bias[level] >= stability_score_thresh``; binarise at the mask
   threshold; drop masks whose box touches a crop edge that is not an image edge;
3. per crop: box NMS (``box_nms_thresh``) with score ``predicted_iou + score_nms_offset[level]``;
4. across crops: box NMS (``crop_nms_thresh``) preferring smaller crops (score 1 / crop area);
5. ``min_mask_region_area > 0``: fill holes / remove islands smaller than it, then NMS preferring
   unchanged masks (SAM's ``postprocess_small_regions``);
6. rock-sand-water filter (:func:`tusss.masks.rock_sand_water`) unless ``rock_sand_water_thresh`` is None.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    MaskData,
    batch_iterator,
    batched_mask_to_box,
    calculate_stability_score,
    is_box_near_crop_edge,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from torchvision.ops.boxes import batched_nms

from tusss.errors import InputError
from tusss.masks.config import MaskGenConfig, preset_config
from tusss.masks.maskset import MaskSet
from tusss.masks.rsw import rock_sand_water
from tusss.masks.sam_registry import build_sam, state_dict_id
from tusss.validate import check_image

N_LEVELS = 3  # SAM multimask outputs: 0 sub-part, 1 part, 2 whole


class SamBackend:
    """How SAM's image encoder and its prompt-batched mask decoder run: the generator's one backend seam.

    :class:`TorchSamBackend` runs the ``Sam`` modules; ``tusss.engine.runtime.EngineSamBackend`` runs an engine's
    ``sam_encoder`` / ``sam_decoder`` graphs. ``name`` and ``precision`` identify the backend in the mask-cache
    key (:attr:`MaskGenerator.config_hash`), so that masks of an fp16 engine are never served as fp32 masks.
    """

    name: str = "torch"
    precision: str = "fp32"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) float32 pre-processed (normalised, padded) input -> (N, C, S/16, S/16) embeddings."""
        raise NotImplementedError

    def decode(
        self, image_embedding: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, C, h, w), (B, 1, 2) coords in the S frame, (B, 1) labels -> ((B, 3, 4h, 4w) logits, (B, 3) IoU)."""
        raise NotImplementedError

    @property
    def cache_tag(self) -> str:
        """'' for eager PyTorch fp32 (the reference masks), else ``"<name>:<precision>"``."""
        return "" if (self.name, self.precision) == ("torch", "fp32") else f"{self.name}:{self.precision}"

    def info(self) -> dict[str, Any]:
        """JSON-able description (name, precision, ...)."""
        return {"name": self.name, "precision": self.precision}


class TorchSamBackend(SamBackend):
    """SAM's own PyTorch modules (image encoder, prompt encoder, mask decoder) of ``sam``."""

    def __init__(self, sam: Sam) -> None:
        self.sam = sam

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.sam.image_encoder(images)

    def decode(
        self, image_embedding: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pe = self.sam.prompt_encoder
        sparse, dense = pe(points=(point_coords, point_labels), boxes=None, masks=None)
        return self.sam.mask_decoder(
            image_embeddings=image_embedding,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )


class BackendSamPredictor(SamPredictor):
    """segment_anything's ``SamPredictor`` whose encoder and point-prompt decoder run through a :class:`SamBackend`
    (the pre/post-processing, i.e. resize, normalisation, padding and mask up-sampling, stay SAM's own)."""

    def __init__(self, sam: Sam, backend: SamBackend) -> None:
        super().__init__(sam)
        self.backend = backend

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        S = self.model.image_encoder.img_size
        if transformed_image.ndim != 4 or transformed_image.shape[1] != 3 or max(transformed_image.shape[2:]) != S:
            raise InputError(
                f"set_torch_image input must be BCHW with long side {S}, got {tuple(transformed_image.shape)}"
            )
        self.reset_image()
        self.original_size = original_image_size
        self.input_size = tuple(transformed_image.shape[-2:])
        input_image = self.model.preprocess(transformed_image)
        self.features = self.backend.encode(input_image).to(self.device)
        self.is_image_set = True

    def set_features(self, features: torch.Tensor, original_size: tuple, input_size: tuple) -> None:
        """Set an image by its encoder output (computed elsewhere, e.g. batched), as ``set_image`` would."""
        self.reset_image()
        self.features = features
        self.original_size = tuple(original_size)
        self.input_size = tuple(input_size)
        self.is_image_set = True

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        if point_coords is None or boxes is not None or mask_input is not None or not multimask_output:
            if isinstance(self.backend, TorchSamBackend):  # SAM's own general path
                return super().predict_torch(point_coords, point_labels, boxes, mask_input, multimask_output,
                                             return_logits)
            raise InputError(f"the {self.backend.name} SAM decoder takes point prompts with multimask_output=True "
                             "only")
        low, iou = self.backend.decode(self.features, point_coords, point_labels)
        low, iou = low.to(self.device), iou.to(self.device)
        masks = self.model.postprocess_masks(low, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low


class LevelMaskGenerator(SamAutomaticMaskGenerator):
    """``SamAutomaticMaskGenerator`` whose masks carry their level and whose filters use level offsets.

    ``generate_mask_data(image)`` returns SAM's ``MaskData`` (keys ``rles``, ``boxes`` XYXY, ``iou_preds``,
    ``points``, ``stability_score``, ``crop_boxes`` XYXY, ``level``) after steps 1-6 of the module doc.
    """

    def __init__(self, model: Sam, config: MaskGenConfig, backend: SamBackend | None = None) -> None:
        super().__init__(model, output_mode="uncompressed_rle", **config.sam_kwargs())
        self.config = config
        self.backend = backend if backend is not None else TorchSamBackend(model)
        self.predictor = BackendSamPredictor(model, self.backend)  # encoder + decoder through the backend
        self.preset_features: tuple | None = None  # full-image encoder output given by MaskGenerator.generate_batch
        self.score_thresh_offset = torch.tensor(config.score_thresh_offset, dtype=torch.float32)
        self.score_nms_offset = torch.tensor(config.score_nms_offset, dtype=torch.float32)
        self.stability_score_bias = torch.tensor(config.stability_score_bias, dtype=torch.float32)

    @torch.no_grad()
    def encode_full_images(self, images: list[np.ndarray]) -> list[tuple[torch.Tensor, tuple, tuple]]:
        """SAM's ``set_image`` pre-processing of every image + ONE backend encoder call for all of them.

        Returns per image (features (1, C, h, w), original size, input size), what ``set_image`` would set.
        """
        pred = self.predictor
        ins, meta = [], []
        for im in images:
            t = torch.as_tensor(pred.transform.apply_image(im), device=pred.device).permute(2, 0, 1).contiguous()
            meta.append((tuple(im.shape[:2]), tuple(t.shape[-2:])))
            ins.append(pred.model.preprocess(t[None]))
        feats = self.backend.encode(torch.cat(ins, 0)).to(pred.device)
        return [(feats[i: i + 1], o, s) for i, (o, s) in enumerate(meta)]

    @torch.no_grad()
    def generate_mask_data(self, image: np.ndarray) -> MaskData:
        """Steps 1-6 on an (H, W, 3) uint8 RGB image; returns the kept masks as SAM ``MaskData`` (numpy)."""
        data = self._generate_masks(image)  # SAM's own loop over crops + cross-crop NMS (steps 1-4)
        if self.min_mask_region_area > 0:  # step 5, SAM's own post-processing
            data = self.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        if self.config.rock_sand_water_thresh is not None and len(data["rles"]) > 0:  # step 6
            masks = np.stack([rle_to_mask(r) for r in data["rles"]])
            keep = rock_sand_water(
                masks,
                data["level"],
                self.config.rock_sand_water_thresh,
                self.config.rock_sand_water_chunk_size,
                device=self.predictor.device,
            )
            data.filter(torch.as_tensor(keep))
            data["_masks"] = masks[keep]  # decoded once; reused by the caller
        return data

    def _process_crop(
        self, image: np.ndarray, crop_box: list[int], crop_layer_idx: int, orig_size: tuple[int, ...]
    ) -> MaskData:
        # SAM's _process_crop with the NMS score predicted_iou + score_nms_offset[level] (step 3).
        x0, y0, x1, y1 = crop_box
        cropped_im = image[y0:y1, x0:x1, :]
        cropped_im_size = cropped_im.shape[:2]
        if crop_layer_idx == 0 and self.preset_features is not None:  # crop 0 = the whole image, encoded already
            self.predictor.set_features(*self.preset_features)
        else:
            self.predictor.set_image(cropped_im)
        points_scale = np.array(cropped_im_size)[None, ::-1]
        points_for_image = self.point_grids[crop_layer_idx] * points_scale
        data = MaskData()
        for (points,) in batch_iterator(self.points_per_batch, points_for_image):
            batch_data = self._process_batch(points, cropped_im_size, crop_box, orig_size)
            data.cat(batch_data)
            del batch_data
        self.predictor.reset_image()

        nms_score = data["iou_preds"] + self.score_nms_offset.to(data["iou_preds"].device)[data["level"].long()]
        keep_by_nms = batched_nms(
            data["boxes"].float(),
            nms_score,
            torch.zeros(len(data["boxes"])),  # categories
            iou_threshold=self.box_nms_thresh,
        )
        data.filter(keep_by_nms)

        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        # (n, 4) even when n == 0 (SAM's list form gives shape (0,), which breaks box_area downstream)
        data["crop_boxes"] = torch.tensor([crop_box], dtype=torch.int64).repeat(len(data["rles"]), 1)
        return data

    def _process_batch(
        self, points: np.ndarray, im_size: tuple[int, ...], crop_box: list[int], orig_size: tuple[int, ...]
    ) -> MaskData:
        # SAM's _process_batch with level tags and the level offsets of step 2. SamPredictor.predict_torch is
        # split in two so that the predicted-IoU filter runs on the low-res logits, before the (costly)
        # up-sampling to the image size; the up-sampling is per mask, so the kept masks are unchanged.
        orig_h, orig_w = orig_size
        predictor, model = self.predictor, self.predictor.model
        transformed_points = predictor.transform.apply_coords(points, im_size)
        in_points = torch.as_tensor(transformed_points, device=predictor.device)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        low_res, iou_preds = self.backend.decode(predictor.features, in_points[:, None, :], in_labels[:, None])
        n_out = low_res.shape[1]
        if n_out != N_LEVELS:
            raise InputError(f"SAM returned {n_out} masks per point, expected {N_LEVELS} (multimask output)")
        level = torch.arange(N_LEVELS, device=iou_preds.device).expand_as(iou_preds)
        data = MaskData(
            low_res=low_res.flatten(0, 1),
            iou_preds=iou_preds.flatten(0, 1),
            points=torch.as_tensor(points.repeat(n_out, axis=0)),
            level=level.flatten(0, 1).to(torch.int8),
        )
        del low_res

        dev = data["iou_preds"].device
        if self.pred_iou_thresh > 0.0:
            off = self.score_thresh_offset.to(dev)[data["level"].long()]
            data.filter((data["iou_preds"] + off) > self.pred_iou_thresh)

        data["masks"] = model.postprocess_masks(
            data["low_res"][:, None], predictor.input_size, predictor.original_size
        )[:, 0]
        del data["low_res"]

        data["stability_score"] = calculate_stability_score(
            data["masks"], self.predictor.model.mask_threshold, self.stability_score_offset
        )
        if self.stability_score_thresh > 0.0:
            bias = self.stability_score_bias.to(dev)[data["level"].long()]
            data.filter((data["stability_score"] + bias) >= self.stability_score_thresh)

        data["masks"] = data["masks"] > self.predictor.model.mask_threshold
        data["boxes"] = batched_mask_to_box(data["masks"])

        keep_mask = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if not torch.all(keep_mask):
            data.filter(keep_mask)

        data["masks"] = uncrop_masks(data["masks"], crop_box, orig_h, orig_w)
        data["rles"] = mask_to_rle_fast(data["masks"])
        del data["masks"]
        return data


def mask_to_rle_fast(tensor: torch.Tensor) -> list[dict[str, Any]]:
    """Same output as segment_anything's ``mask_to_rle_pytorch`` (uncompressed column-major RLE of (B, H, W)
    bool masks) in O(B + changes) instead of one pass over all change indices per mask."""
    b, h, w = tensor.shape
    t = tensor.permute(0, 2, 1).flatten(1)
    change = (t[:, 1:] ^ t[:, :-1]).nonzero()  # (K, 2), sorted by mask then position
    per_mask = torch.bincount(change[:, 0], minlength=b).cpu().tolist()
    pos = (change[:, 1] + 1).cpu().numpy()
    first = t[:, 0].cpu().numpy()
    out = []
    start = 0
    for i in range(b):
        bounds = np.concatenate([[0], pos[start : start + per_mask[i]], [h * w]])
        start += per_mask[i]
        counts = [] if not first[i] else [0]
        counts.extend(np.diff(bounds).tolist())
        out.append({"size": [h, w], "counts": counts})
    return out


class MaskGenerator:
    """SAM mask stage of tusss: image (H, W, 3) uint8 RGB -> :class:`tusss.masks.MaskSet`.

    Build with :meth:`from_pretrained`, or wrap an existing segment_anything ``Sam``::

        gen = MaskGenerator.from_pretrained("vit_h")               # TUSS pattern l2_nmsf_s1_rsw3
        gen = MaskGenerator.from_pretrained("vit_b", preset="sam", points_per_side=16)
        ms = gen.generate(image)                                    # MaskSet

    Attributes:
        sam: the segment_anything ``Sam`` network.
        config: the :class:`MaskGenConfig` in use.
        model_type: registry name (``"vit_h"`` ...), or ``""`` for a user-supplied Sam.
    """

    def __init__(
        self,
        sam: Sam,
        config: MaskGenConfig | None = None,
        *,
        model_type: str = "",
        weights_id: str = "",
        backend: SamBackend | None = None,
        amg: str = "reference",
    ) -> None:
        if not isinstance(sam, Sam):
            raise InputError(f"sam must be a segment_anything Sam, got {type(sam)}")
        self.config = config if config is not None else preset_config("tuss")
        if not isinstance(self.config, MaskGenConfig):
            raise InputError(f"config must be a MaskGenConfig, got {type(self.config)}")
        self.sam = sam
        self.model_type = model_type
        self._weights_id = weights_id
        if backend is not None and not isinstance(backend, SamBackend):
            raise InputError(f"backend must be a tusss.masks.generator.SamBackend, got {type(backend).__name__}")
        if amg not in ("reference", "fast"):
            raise InputError(f"amg must be 'reference' or 'fast', got {amg!r}")
        self.amg = amg  # same masks either way (tests/test_masks_fast.py), so not part of config_hash
        if amg == "fast":  # device-resident pipeline (tusss.masks.amg_fast), imported lazily: it imports this module
            from tusss.masks.amg_fast import FastLevelMaskGenerator

            self._amg = FastLevelMaskGenerator(sam, self.config, backend)
        else:
            self._amg = LevelMaskGenerator(sam, self.config, backend)

    @classmethod
    def from_pretrained(
        cls,
        model_type: str = "vit_h",
        checkpoint: str | os.PathLike | None = "official",
        preset: str = "tuss",
        device: str | torch.device = "cpu",
        **overrides: Any,
    ) -> MaskGenerator:
        """Build SAM ``model_type`` with its weights and the config ``preset`` + ``overrides``.

        Args:
            model_type: ``"vit_h"`` (the reference model), ``"vit_l"``, ``"vit_b"`` or ``"vit_tiny"`` (tests).
            checkpoint: ``"official"`` (found under ``$TUSSS_HOME/sam`` or downloaded once), a file path,
                or ``None`` for random weights (drawn from the current torch RNG state).
            preset: ``"tuss"`` or ``"sam"`` (see :mod:`tusss.masks.config`).
            device: torch device of the network and of the RSW products.
            **overrides: :class:`MaskGenConfig` fields.

        Raises:
            InputError: unknown model type / preset / field; WeightsNotFoundError: checkpoint missing;
            CorruptFileError: checkpoint unreadable.
        """
        config = preset_config(preset, **overrides)  # validate before loading weights
        sam, weights_id = build_sam(model_type, checkpoint, device=device)
        return cls(sam, config, model_type=model_type, weights_id=weights_id)

    @property
    def device(self) -> torch.device:
        return self.sam.device

    @property
    def weights_id(self) -> str:
        """Identity of the weights (official file name, local file fingerprint or parameter hash)."""
        if not self._weights_id:
            self._weights_id = state_dict_id(self.sam)
        return self._weights_id

    @property
    def backend(self) -> SamBackend:
        """The :class:`SamBackend` that runs SAM's encoder and decoder."""
        return self._amg.backend

    def with_backend(self, backend: SamBackend) -> MaskGenerator:
        """A new generator on the same Sam, config and weights identity whose SAM networks run on ``backend``."""
        return MaskGenerator(self.sam, self.config, model_type=self.model_type, weights_id=self.weights_id,
                             backend=backend, amg=self.amg)

    @property
    def config_hash(self) -> str:
        """Key of the masks this generator produces (config + model type + weights + backend/precision), used by
        MaskCache. Eager PyTorch fp32 keeps the key of earlier versions; any other backend or precision adds
        ``"<backend>:<precision>"`` to it."""
        tag = self.backend.cache_tag
        return self.config.config_hash(self.model_type, self.weights_id + (f"|backend={tag}" if tag else ""))

    def generate(self, image: np.ndarray) -> MaskSet:
        """Masks of one image.

        Args:
            image: (H, W, 3) uint8 RGB.

        Returns:
            MaskSet with masks (M, H, W) bool, level (M,) int8 in {0, 1, 2}, predicted_iou (M,) float32
            (SAM's prediction, without level offsets), stability (M,) float32, area, bbox XYWH, crop_box
            XYWH, point_coords (M, 2) in image pixels. Order: SAM's order after its last NMS, then (with
            RSW) level-2 masks, kept level-1 masks, kept level-0 masks, as TUSS stores them.
        """
        image = check_image(image)
        data = self._amg.generate_mask_data(image)
        return mask_data_to_maskset(data, image.shape[:2])

    def generate_batch(self, images: list[np.ndarray]) -> list[MaskSet]:
        """:meth:`generate` of several images, with the full-image SAM encoder pass of all of them as one batch
        (the heavy stage; crops of ``crop_n_layers > 0`` and the prompt decoder run per image). Not re-entrant:
        callers that share a generator between threads serialise calls (``tusss.Predictor`` does)."""
        images = [check_image(im) for im in images]
        if len(images) <= 1:
            return [self.generate(im) for im in images]
        out = []
        for im, f in zip(images, self._amg.encode_full_images(images)):
            self._amg.preset_features = f
            try:
                data = self._amg.generate_mask_data(im)
            finally:
                self._amg.preset_features = None
            out.append(mask_data_to_maskset(data, im.shape[:2]))
        return out


def _xyxy_to_xywh(b: Any) -> np.ndarray:
    b = np.array(b, dtype=np.int64).reshape(-1, 4)  # copy
    b[:, 2:] -= b[:, :2]
    return b


def mask_data_to_maskset(data: MaskData, hw: tuple[int, int]) -> MaskSet:
    """Convert the numpy ``MaskData`` of :meth:`LevelMaskGenerator.generate_mask_data` to a MaskSet."""
    n = len(data["rles"])
    if n == 0:
        return MaskSet.empty(hw)
    try:
        masks = data["_masks"]
    except KeyError:
        masks = np.stack([rle_to_mask(r) for r in data["rles"]])
    boxes = _xyxy_to_xywh(data["boxes"])
    crops = _xyxy_to_xywh(data["crop_boxes"])
    return MaskSet(
        masks=masks.astype(bool, copy=False),
        level=np.asarray(data["level"], dtype=np.int8),
        predicted_iou=np.asarray(data["iou_preds"], dtype=np.float32),
        stability=np.asarray(data["stability_score"], dtype=np.float32),
        area=masks.reshape(n, -1).sum(1),
        bbox=boxes,
        crop_box=crops,
        point_coords=np.asarray(data["points"], dtype=np.float32).reshape(n, 2),
    )
