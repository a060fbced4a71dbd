"""Device-resident automatic mask generation: the same masks as :class:`LevelMaskGenerator`, fewer host trips.

:class:`FastLevelMaskGenerator` runs the six steps of :mod:`tusss.masks.generator` (docs/reference-code.md §1) with
every intermediate on the SAM network's device:

* all crops of an image go through the image encoder in one batched call (``SamBackend.encode`` on an
  ``(n_crops, 3, S, S)`` batch; ``encoder_batch`` caps it for memory);
* the point prompts of a crop are decoded in batches of ``points_per_batch`` (up to 1024 in the GPU check)
  through the same ``SamBackend.decode`` as the reference path; thresholds, stability score, binarisation,
  boxes and the crop-edge filter are segment_anything's own tensor functions, applied on the device;
* masks stay at crop size until the per-crop box NMS (torchvision ``batched_nms``), then are padded into the
  image frame; the cross-crop NMS, the small-region clean-up, the rock-sand-water filter
  (:func:`tusss.masks.rock_sand_water` with device tensors) and the RLE encoding (:func:`rle_counts_device`)
  all run on whole mask batches;
* small-region removal is a vectorised 8-connected component labelling (:func:`label_components`: min-label
  propagation by 3x3 min-pooling plus pointer jumping) with per-component sizes from one ``bincount``; it
  reproduces segment_anything's ``remove_small_regions`` (OpenCV ``connectedComponentsWithStats``) exactly.
  The one case whose answer depends on OpenCV's label numbering (every island of a mask is small and two
  or more share the largest size: OpenCV keeps its lowest-numbered one) is handed to that function on the
  host for that mask only; ``stats["cc_host_fallbacks"]`` counts such masks.

The host sees the image once (crop resize, as ``SamPredictor.set_image`` does it) and the results once.
With the same network the output equals the reference path's: bit for bit on the CPU in float32 (tested with
the deterministic fake SAM), and on a GPU up to the float differences of batched kernels (the CUDA test states
its mask-IoU tolerance). Batching changes no decision: every filter is per candidate, and both NMS steps see
the candidates in the reference order.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    MaskData,
    batched_mask_to_box,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    remove_small_regions,
)
from torchvision.ops.boxes import batched_nms, box_area

from tusss.errors import InputError
from tusss.masks.config import MaskGenConfig
from tusss.masks.generator import N_LEVELS, LevelMaskGenerator, SamBackend
from tusss.masks.rsw import rock_sand_water

__all__ = [
    "FastLevelMaskGenerator",
    "label_components",
    "remove_small_regions_batched",
    "rle_counts_device",
    "rle_dicts",
]


# ----------------------------------------------------------------------------------------------- components


def label_components(fg: torch.Tensor, max_iters: int | None = None) -> torch.Tensor:
    """8-connected components of a batch of binary images, labelled on the tensor's device.

    Each foreground pixel gets the row-major flat index (``y * W + x``) of the first pixel of its component;
    background pixels get ``H * W``. Min-label propagation (3x3 min-pooling restricted to the foreground)
    alternates with pointer jumping (``label <- label[label]``), so long components converge in far fewer
    steps than their length; the loop stops at the fixed point (one host sync per step, not per mask).

    Args:
        fg: (B, H, W) bool.
        max_iters: safety cap on the steps (default ``H * W + 1``, never reached by a correct fixed point).

    Returns:
        (B, H, W) int64 labels.
    """
    if fg.dtype != torch.bool or fg.dim() != 3:
        raise InputError(f"label_components: fg must be a (B, H, W) bool tensor, got {fg.dtype} {tuple(fg.shape)}")
    B, H, W = fg.shape
    n = H * W
    if B == 0 or n == 0:
        return torch.full(fg.shape, n, dtype=torch.int64, device=fg.device)
    # float labels so that max_pool2d runs on every device; exact below 2**24 (float32) / 2**53 (float64)
    ftype = torch.float32 if n < (1 << 24) else torch.float64
    idx = torch.arange(n, device=fg.device, dtype=ftype).view(1, H, W)
    big = torch.tensor(float(n), device=fg.device, dtype=ftype)
    lab = torch.where(fg, idx, big)
    cap = max_iters if max_iters is not None else n + 1
    for _ in range(cap):
        pooled = -F.max_pool2d(-lab[:, None], kernel_size=3, stride=1, padding=1)[:, 0]
        new = torch.where(fg, torch.minimum(lab, pooled), big)
        flat = new.reshape(B, n)
        # pointer jumping: a pixel takes the label of the pixel its label names (same component, never larger)
        jumped = torch.gather(flat, 1, new.reshape(B, n).clamp_max(n - 1).long()).view(B, H, W)
        new = torch.where(fg, torch.minimum(new, jumped), big)
        if torch.equal(new, lab):
            break
        lab = new
    return lab.long()


def _component_sizes(lab: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """(B, H, W) int64 size of the component of each foreground pixel (0 on background)."""
    B, H, W = lab.shape
    n = H * W
    key = (torch.arange(B, device=lab.device)[:, None] * n + lab.reshape(B, n).clamp_max(n - 1)).reshape(-1)
    counts = torch.bincount(key[fg.reshape(-1)], minlength=B * n)
    return torch.where(fg, counts[key].view(B, H, W), torch.zeros((), dtype=counts.dtype, device=lab.device))


def remove_small_regions_batched(
    masks: torch.Tensor, area_thresh: int, mode: str, *, stats: Counter | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """segment_anything's ``remove_small_regions`` on a batch of masks, without a per-mask OpenCV pass.

    ``holes``: every 8-connected component of the complement smaller than ``area_thresh`` is filled.
    ``islands``: every component of the mask smaller than ``area_thresh`` is removed; when all are small, the
    largest is kept (ties: OpenCV's lowest label, resolved by that function on the host for that mask only).
    ``changed`` is True when some component was small, as in segment_anything (also when nothing moves).

    Args:
        masks: (B, H, W) bool.
        area_thresh: components with fewer pixels are small.
        mode: ``"holes"`` or ``"islands"``.
        stats: optional counter; ``cc_host_fallbacks`` is increased by the masks resolved on the host.

    Returns:
        ``(new_masks (B, H, W) bool, changed (B,) bool)`` on the masks' device.
    """
    if mode not in ("holes", "islands"):
        raise InputError(f"remove_small_regions_batched: mode must be 'holes' or 'islands', got {mode!r}")
    if masks.dtype != torch.bool or masks.dim() != 3:
        raise InputError(f"remove_small_regions_batched: masks must be (B, H, W) bool, got {masks.dtype} "
                         f"{tuple(masks.shape)}")
    work = ~masks if mode == "holes" else masks
    lab = label_components(work)
    size = _component_sizes(lab, work)
    small = work & (size < area_thresh)
    changed = small.flatten(1).any(1)
    if mode == "holes":
        return masks | small, changed
    big = work & ~small
    has_big = big.flatten(1).any(1)
    out = torch.where(changed[:, None, None], big, masks)
    all_small = changed & ~has_big
    if bool(all_small.any()):
        sel = torch.nonzero(all_small).flatten()
        sz = size[sel]
        mx = sz.flatten(1).amax(1)
        at_max = sz == mx[:, None, None]
        # a component of size s contributes s pixels: the pixels at the max size count the tied components
        n_tied = at_max.flatten(1).sum(1) // mx
        out[sel] = at_max
        tied = sel[n_tied > 1]
        if tied.numel():
            for i in tied.tolist():  # rare: the answer depends on OpenCV's label order
                m, _ = remove_small_regions(masks[i].cpu().numpy(), area_thresh, "islands")
                out[i] = torch.from_numpy(np.asarray(m, dtype=bool)).to(out.device)
            if stats is not None:
                stats["cc_host_fallbacks"] += int(tied.numel())
    return out, changed


# ----------------------------------------------------------------------------------------------- RLE


def rle_counts_device(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Uncompressed column-major RLE of a batch of masks, computed on the masks' device in one pass.

    Same runs as segment_anything's ``mask_to_rle_pytorch`` (first run counts zeros, so a mask starting with a
    1 gets a leading 0).

    Args:
        masks: (B, H, W) bool.

    Returns:
        ``(counts, offsets)``: (K,) int64 run lengths of all masks back to back and (B + 1,) int64 offsets
        (mask i's runs are ``counts[offsets[i]:offsets[i + 1]]``).
    """
    if masks.dtype != torch.bool or masks.dim() != 3:
        raise InputError(f"rle_counts_device: masks must be (B, H, W) bool, got {masks.dtype} {tuple(masks.shape)}")
    b, h, w = masks.shape
    dev = masks.device
    n = h * w
    if b == 0:
        return torch.zeros(0, dtype=torch.int64, device=dev), torch.zeros(1, dtype=torch.int64, device=dev)
    t = masks.permute(0, 2, 1).reshape(b, n)
    change = (t[:, 1:] ^ t[:, :-1]).nonzero()  # (K, 2) sorted by mask, then position
    mi, pos = change[:, 0], change[:, 1] + 1
    k = mi.shape[0]
    per_mask = torch.bincount(mi, minlength=b)
    lead = t[:, 0].long()  # 1 -> a leading zero-length run of zeros
    lengths = lead + per_mask + 1
    offsets = torch.zeros(b + 1, dtype=torch.int64, device=dev)
    offsets[1:] = torch.cumsum(lengths, 0)
    counts = torch.zeros(int(offsets[-1]), dtype=torch.int64, device=dev)  # one sync: the total size
    first_change = torch.cumsum(per_mask, 0) - per_mask  # index in `change` of each mask's first change
    if k:
        rank = torch.arange(k, device=dev) - first_change[mi]
        prev = torch.where(rank > 0, torch.roll(pos, 1), torch.zeros_like(pos))
        counts[offsets[mi] + lead[mi] + rank] = pos - prev
    last = torch.zeros(b, dtype=torch.int64, device=dev)
    if k:
        last = last.scatter_reduce(0, mi, pos, reduce="amax")
    counts[offsets[1:] - 1] = n - last
    return counts, offsets


def rle_dicts(masks: torch.Tensor) -> list[dict[str, Any]]:
    """``[{"size": [H, W], "counts": [...]}, ...]`` like ``mask_to_rle_pytorch``, from one device transfer."""
    counts, offsets = rle_counts_device(masks)
    h, w = int(masks.shape[1]), int(masks.shape[2])
    c = counts.cpu().numpy()
    o = offsets.cpu().numpy()
    return [{"size": [h, w], "counts": c[o[i] : o[i + 1]].tolist()} for i in range(len(o) - 1)]


# ----------------------------------------------------------------------------------------------- generator


class FastLevelMaskGenerator(LevelMaskGenerator):
    """:class:`LevelMaskGenerator` with the device-resident pipeline of the module doc.

    Args:
        model: the segment_anything ``Sam``.
        config: the :class:`MaskGenConfig` (its ``points_per_batch`` sets the decoder batch).
        backend: the :class:`SamBackend` that runs encoder and decoder (default: SAM's own modules).
        encoder_batch: crops per encoder call (0 = all crops of the image in one call).
        cc_chunk: masks per connected-component batch (memory only).

    ``stats`` counts ``encoder_calls``, ``decoder_calls`` and ``cc_host_fallbacks`` over the generator's life.
    """

    def __init__(
        self,
        model: Sam,
        config: MaskGenConfig,
        backend: SamBackend | None = None,
        *,
        encoder_batch: int = 0,
        cc_chunk: int = 64,
    ) -> None:
        super().__init__(model, config, backend)
        if isinstance(encoder_batch, bool) or not isinstance(encoder_batch, int) or encoder_batch < 0:
            raise InputError(f"encoder_batch must be an int >= 0, got {encoder_batch!r}")
        if isinstance(cc_chunk, bool) or not isinstance(cc_chunk, int) or cc_chunk < 1:
            raise InputError(f"cc_chunk must be an int >= 1, got {cc_chunk!r}")
        self.encoder_batch = encoder_batch
        self.cc_chunk = cc_chunk
        self.stats: Counter = Counter()

    # -- step 1: crops through the encoder in one batch
    def _encode_crops(self, image: np.ndarray, crop_boxes: list[list[int]]) -> tuple[torch.Tensor, list, list]:
        pred, model = self.predictor, self.predictor.model
        batch, input_sizes, crop_sizes = [], [], []
        preset = self.preset_features  # (features, original size, input size) of crop 0 from generate_batch
        for i, (x0, y0, x1, y1) in enumerate(crop_boxes):
            crop = image[y0:y1, x0:x1, :]
            crop_sizes.append(crop.shape[:2])
            if i == 0 and preset is not None:
                input_sizes.append(tuple(preset[2]))
                continue
            resized = pred.transform.apply_image(crop)  # SamPredictor.set_image's host resize
            t = torch.as_tensor(resized, device=pred.device).permute(2, 0, 1).contiguous()[None]
            input_sizes.append(tuple(t.shape[-2:]))
            batch.append(model.preprocess(t))
        feats = [preset[0].to(pred.device)] if preset is not None else []
        if batch:
            x = torch.cat(batch, 0)
            step = self.encoder_batch or x.shape[0]
            for i in range(0, x.shape[0], step):
                feats.append(self.backend.encode(x[i : i + step]).to(pred.device))
                self.stats["encoder_calls"] += 1
        return torch.cat(feats, 0), input_sizes, crop_sizes

    # -- steps 2 and 3 for one crop
    def _crop_candidates(
        self,
        feat: torch.Tensor,
        input_size: tuple[int, int],
        crop_size: tuple[int, int],
        crop_box: list[int],
        layer_idx: int,
        orig_size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        pred, model = self.predictor, self.predictor.model
        dev = pred.device
        orig_h, orig_w = orig_size
        points = self.point_grids[layer_idx] * np.array(crop_size)[None, ::-1]  # (P, 2) float64, crop frame
        in_points = torch.as_tensor(pred.transform.apply_coords(points, crop_size), device=dev)
        points_t = torch.as_tensor(points, device=dev)
        thr_off = self.score_thresh_offset.to(dev)
        stab_bias = self.stability_score_bias.to(dev)
        parts: list[dict[str, torch.Tensor]] = []
        for s in range(0, len(points), self.points_per_batch):
            p = in_points[s : s + self.points_per_batch]
            labels = torch.ones(p.shape[0], dtype=torch.int, device=dev)
            low_res, iou_preds = self.backend.decode(feat, p[:, None, :], labels[:, None])
            self.stats["decoder_calls"] += 1
            low_res, iou_preds = low_res.to(dev), iou_preds.to(dev)
            if low_res.shape[1] != N_LEVELS:
                raise InputError(f"SAM returned {low_res.shape[1]} masks per point, expected {N_LEVELS} "
                                 "(multimask output)")
            nb = p.shape[0]
            level = torch.arange(N_LEVELS, device=dev).repeat(nb)
            pidx = torch.arange(s, s + nb, device=dev).repeat_interleave(N_LEVELS)
            low_res, iou_preds = low_res.flatten(0, 1), iou_preds.flatten(0, 1)
            if self.pred_iou_thresh > 0.0:
                keep = (iou_preds + thr_off[level]) > self.pred_iou_thresh
                low_res, iou_preds, level, pidx = low_res[keep], iou_preds[keep], level[keep], pidx[keep]
            masks = model.postprocess_masks(low_res[:, None], input_size, crop_size)[:, 0]
            del low_res
            stab = calculate_stability_score(masks, model.mask_threshold, self.stability_score_offset)
            if self.stability_score_thresh > 0.0:
                keep = (stab + stab_bias[level]) >= self.stability_score_thresh
                masks, iou_preds, level, pidx, stab = masks[keep], iou_preds[keep], level[keep], pidx[keep], stab[keep]
            masks = masks > model.mask_threshold
            boxes = batched_mask_to_box(masks)
            keep = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
            parts.append(dict(masks=masks[keep], boxes=boxes[keep], iou_preds=iou_preds[keep], level=level[keep],
                              pidx=pidx[keep], stability_score=stab[keep]))
        d = {k: torch.cat([q[k] for q in parts], 0) for k in parts[0]}
        # step 3: per-crop NMS, score predicted_iou + score_nms_offset[level]
        nms_score = d["iou_preds"] + self.score_nms_offset.to(dev)[d["level"]]
        zeros = torch.zeros_like(nms_score)
        keep = batched_nms(d["boxes"].float(), nms_score, zeros, iou_threshold=self.box_nms_thresh)
        d = {k: v[keep] for k, v in d.items()}
        x0, y0, x1, y1 = crop_box
        off = torch.tensor([[x0, y0, x0, y0]], device=dev)
        d["boxes"] = d["boxes"] + off
        d["points"] = points_t[d.pop("pidx")] + torch.tensor([[x0, y0]], device=dev)
        pad = (x0, orig_w - x1, y0, orig_h - y1)
        d["masks"] = F.pad(d["masks"], pad, value=False) if any(pad) else d["masks"]
        d["crop_boxes"] = torch.tensor([crop_box], dtype=torch.int64, device=dev).repeat(len(keep), 1)
        return d

    # -- step 5 on the device
    def _small_regions(self, d: dict[str, torch.Tensor], min_area: int, nms_thresh: float) -> dict[str, torch.Tensor]:
        masks = d["masks"]
        new, changed = [], []
        for s in range(0, masks.shape[0], self.cc_chunk):
            m = masks[s : s + self.cc_chunk]
            m, ch1 = remove_small_regions_batched(m, min_area, "holes", stats=self.stats)
            m, ch2 = remove_small_regions_batched(m, min_area, "islands", stats=self.stats)
            new.append(m)
            changed.append(ch1 | ch2)
        masks = torch.cat(new, 0)
        ch = torch.cat(changed, 0)
        boxes = batched_mask_to_box(masks)
        scores = (~ch).to(torch.float32)  # 1 = unchanged: NMS prefers masks that needed no clean-up
        keep = batched_nms(boxes.float(), scores, torch.zeros_like(scores), iou_threshold=nms_thresh)
        # segment_anything updates the box of a changed mask only; unchanged masks keep theirs
        d = dict(d, masks=masks, boxes=torch.where(ch[:, None], boxes, d["boxes"]))
        return {k: v[keep] for k, v in d.items()}

    @torch.no_grad()
    def generate_mask_data(self, image: np.ndarray) -> MaskData:
        """Steps 1-6 on an (H, W, 3) uint8 RGB image; same ``MaskData`` (numpy) as the reference path, with the
        decoded masks in ``_masks``."""
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        feats, input_sizes, crop_sizes = self._encode_crops(image, crop_boxes)
        parts = [
            self._crop_candidates(feats[i : i + 1], input_sizes[i], crop_sizes[i], cb, li, orig_size)
            for i, (cb, li) in enumerate(zip(crop_boxes, layer_idxs))
        ]
        del feats
        d = {k: torch.cat([q[k] for q in parts], 0) for k in parts[0]}
        del parts
        if len(crop_boxes) > 1:  # step 4: prefer masks from smaller crops
            scores = 1 / box_area(d["crop_boxes"])
            keep = batched_nms(d["boxes"].float(), scores, torch.zeros_like(scores), iou_threshold=self.crop_nms_thresh)
            d = {k: v[keep] for k, v in d.items()}
        n = d["masks"].shape[0]
        if self.min_mask_region_area > 0 and n > 0:
            d = self._small_regions(d, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh))
        if self.config.rock_sand_water_thresh is not None and d["masks"].shape[0] > 0:  # step 6
            keep = rock_sand_water(d["masks"], d["level"].cpu(), self.config.rock_sand_water_thresh,
                                   self.config.rock_sand_water_chunk_size)
            d = {k: v[torch.as_tensor(keep, device=v.device)] for k, v in d.items()}
        rles = rle_dicts(d["masks"])
        out = MaskData(
            rles=rles,
            boxes=d["boxes"].cpu().numpy(),
            iou_preds=d["iou_preds"].cpu().numpy(),
            points=d["points"].cpu().numpy(),
            stability_score=d["stability_score"].cpu().numpy(),
            crop_boxes=d["crop_boxes"].cpu().numpy(),
            level=d["level"].to(torch.int8).cpu().numpy(),
        )
        out["_masks"] = d["masks"].cpu().numpy()
        return out
