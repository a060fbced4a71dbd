"""DBA-CLIP: mask embeddings from a CLIP ViT with a mask-biased dual-softmax last block + GSW (paper §4.1,
docs/reference-code.md §2-4)."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from tusss.clip.block import PerMaskFeatures, TowerRunner
from tusss.clip.config import DBAClipConfig
from tusss.clip.gsw import (
    GSWLayout,
    global_token_masks,
    make_layout,
    normalize_image,
    resize_image,
    window_crops,
    window_token_masks,
)
from tusss.clip.pooling import gsw_pool
from tusss.clip.templates import get_templates
from tusss.clip.tiny import register_model_configs
from tusss.errors import InputError
from tusss.persist import corrupt
from tusss.validate import check_image, check_masks
from tusss.weights import resolve_checkpoint

OPEN_CLIP_SUBDIR = "open_clip"


def _openai_checkpoint(model: str, path: str | os.PathLike | None = None) -> Path:
    cfg = open_clip.get_pretrained_cfg(model, "openai")
    if not cfg or not cfg.get("url"):
        raise InputError(f"open_clip has no OpenAI weights for model {model!r}; "
                         f"models with 'openai' weights: {open_clip.list_openai_models()}")
    url = cfg["url"]
    filename = url.rsplit("/", 1)[-1]
    return resolve_checkpoint(filename, path=path, url=url, subdir=OPEN_CLIP_SUBDIR,
                              what=f"OpenAI CLIP {model} checkpoint")


_NON_PARAM_KEYS = ("attn_mask", "input_resolution", "context_length", "vocab_size")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """State dict of an OpenAI TorchScript archive (``ViT-B-16.pt``) or of a ``torch.save``d state dict."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sd = torch.jit.load(str(path), map_location="cpu").state_dict()
    except Exception:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise ValueError("the file holds no state dict")
    if next(iter(sd)).startswith("module."):
        sd = {k[7:]: v for k, v in sd.items()}
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items() if k not in _NON_PARAM_KEYS}


def _load_checkpoint_file(model_name: str, path: Path, device: str, quick_gelu: bool) -> torch.nn.Module:
    """A fresh ``model_name`` (fp32) with the weights of ``path`` (OpenAI archive or open_clip state dict)."""
    try:
        sd = _read_state_dict(path)
        model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu, device="cpu")
        if "logit_scale" in sd and sd["logit_scale"].shape != model.logit_scale.shape:
            sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
        model.load_state_dict(sd, strict=True)
        return model.to(device)
    except Exception as e:  # truncated file, wrong architecture, not a checkpoint
        fix = "delete the file so that it is downloaded again, or pass a good file with --weights"
        raise corrupt(path, f"cannot load CLIP weights for {model_name!r} ({type(e).__name__}: {e})", fix) from e


class TextEncoder:
    """How CLIP's text tower runs (the text half of DBAClip's backend seam): (K, T) int64 tokens -> (K, D)
    un-normalised text features. :class:`TorchTextEncoder` runs open_clip's ``encode_text``; the engine runtime
    supplies one on its ``clip_text`` graph."""

    name: str = "torch"

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TorchTextEncoder(TextEncoder):
    """open_clip's own ``model.encode_text``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


class DBAClip:
    """Mask-aware CLIP encoder (paper Eq. 10 with the reference code's details).

    Args:
        model: an ``open_clip`` CLIP model (put in eval mode, gradients off).
        cfg: :class:`DBAClipConfig`.
        model_name: open_clip architecture name.
        runner: the image-tower runner (default: :class:`tusss.clip.block.TowerRunner` on ``model.visual``; the
            engine runtime passes one on its ``clip_windows`` graph). Anything with ``features(images,
            token_masks)`` and ``patch``.
        text_encoder: the text-tower runner (default :class:`TorchTextEncoder`).
        preset: name of the preset ``cfg`` came from (recorded in :meth:`identity`), if known.
        weights_id: identity of the weights (default: sha256 of the model's parameters, computed once).

    Attributes:
        model, cfg, model_name, runner, text_encoder, preset; device; embed_dim: D, dimension of mask / text
        embeddings (512 for ViT-B/16).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: DBAClipConfig,
        model_name: str = "ViT-B-16",
        *,
        runner: TowerRunner | None = None,
        text_encoder: TextEncoder | None = None,
        preset: str | None = None,
        weights_id: str | None = None,
    ):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.cfg = cfg
        self.model_name = model_name
        self.runner = runner if runner is not None else TowerRunner(self.model.visual, cfg)
        self.text_encoder = text_encoder if text_encoder is not None else TorchTextEncoder(self.model)
        self.preset = preset
        self._weights_id = weights_id
        self.patch = self.runner.patch
        self.embed_dim = int(self.model.visual.output_dim)
        self._tokenizer = None
        self._text_cache: dict[tuple[tuple[str, ...], tuple[str, ...]], np.ndarray] = {}

    def with_backend(self, runner: TowerRunner | None = None, text_encoder: TextEncoder | None = None) -> DBAClip:
        """A new DBAClip on the same model, config and identity whose image / text towers run on ``runner`` /
        ``text_encoder`` (None: this one's). Its text cache starts empty."""
        return DBAClip(self.model, self.cfg, self.model_name, runner=runner or self.runner,
                       text_encoder=text_encoder or self.text_encoder, preset=self.preset,
                       weights_id=self._weights_id)

    @property
    def weights_id(self) -> str:
        """sha256 of the model's parameters and buffers (the engine manifest's ``weights_sha256``)."""
        if not self._weights_id:
            from tusss.weights import state_dict_hash

            self._weights_id = state_dict_hash(self.model)
        return self._weights_id

    def identity(self) -> dict[str, str]:
        """The embedder identity a fitted classifier depends on: ``clip_model``, ``clip_weights`` (sha256),
        ``clip_preset`` (name or "custom") and ``clip_config`` (sha256 of every config field)."""
        import hashlib
        import json

        cfg = json.dumps(dataclasses.asdict(self.cfg), sort_keys=True, default=str)
        return {"clip_model": self.model_name, "clip_weights": self.weights_id,
                "clip_preset": self.preset or "custom", "clip_config": hashlib.sha256(cfg.encode()).hexdigest()}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        model: str = "ViT-B-16",
        weights: str | os.PathLike | None = "openai",
        preset: str = "reference",
        device: str = "cpu",
        *,
        quick_gelu: bool = True,
        **overrides: object,
    ) -> DBAClip:
        """Build DBA-CLIP.

        Args:
            model: open_clip architecture (``"ViT-B-16"``; ``"tusss-tiny"`` for fast tests).
            weights: ``"openai"`` (OpenAI weights from ``$TUSSS_HOME/open_clip``, downloaded once unless
                ``TUSSS_OFFLINE=1``; missing -> WeightsNotFoundError), a checkpoint path, or ``None`` for
                random weights (drawn from the caller's torch RNG).
            preset: :class:`DBAClipConfig` preset name; ``overrides`` change single fields.
            device: torch device.
            quick_gelu: QuickGELU activations (the OpenAI CLIP architecture); ignored for OpenAI archives.
        """
        cfg = DBAClipConfig.preset(preset, **overrides)
        register_model_configs()
        if model not in open_clip.list_models():
            raise InputError(f"unknown open_clip model {model!r}; e.g. 'ViT-B-16' or 'tusss-tiny'")
        if weights is None:
            m = open_clip.create_model(model, pretrained=None, force_quick_gelu=quick_gelu, device=device)
        elif isinstance(weights, str) and weights == "openai":
            path = _openai_checkpoint(model)
            m = _load_checkpoint_file(model, path, device, quick_gelu)
        else:
            p = Path(weights).expanduser()
            if not p.is_file():
                url = (open_clip.get_pretrained_cfg(model, "openai") or {}).get("url")
                resolve_checkpoint(p.name, path=p, url=url, what=f"CLIP {model} checkpoint")  # raises
            m = _load_checkpoint_file(model, p, device, quick_gelu)
        m = m.to(device).float()
        return cls(m, cfg, model, preset=preset)

    @property
    def device(self) -> torch.device:
        return self.model.visual.conv1.weight.device

    @property
    def logit_scale(self) -> float:
        """Multiplier of the cosine in :meth:`logits` (OpenAI value 100, docs/reference-code.md §4)."""
        return float(self.cfg.logit_scale)

    # ------------------------------------------------------------------ image side
    def layout(self, hw: tuple[int, int]) -> GSWLayout:
        """GSW passes for an image of size ``hw``."""
        return make_layout(int(hw[0]), int(hw[1]), self.cfg, self.patch)

    @torch.no_grad()
    def pass_features(
        self, image: np.ndarray, masks: np.ndarray
    ) -> tuple[GSWLayout, torch.Tensor | PerMaskFeatures | None, list[torch.Tensor | PerMaskFeatures]]:
        """Run all GSW passes of one image (validated inputs).

        Returns:
            (layout, global token map or None, list of window token maps per window group); shapes as
            :func:`tusss.clip.pooling.gsw_pool` takes them ((h, w, D) / (n, gh, gw, D); for the per-mask bias a
            :class:`~tusss.clip.block.PerMaskFeatures` (packed path) or an extra mask axis (reference backend)).
        """
        cfg = self.cfg
        dev = self.device
        H0, W0 = image.shape[:2]
        lay = self.layout((H0, W0))
        resized = normalize_image(resize_image(image, lay.resized_hw), cfg.image_mean, cfg.image_std, dev)
        m_t = torch.from_numpy(masks).to(dev)
        need_tm = cfg.bias != "none"
        gfeat = None
        if lay.has_global:
            Hr, Wr = lay.resized_hw
            grid = (Hr // self.patch, Wr // self.patch)
            tm = global_token_masks(m_t, grid, cfg.token_downsample)[None] if need_tm else None
            gfeat = self.runner.features(resized[None], tm)
            if not isinstance(gfeat, PerMaskFeatures):
                gfeat = gfeat[0]
        wfeats = []
        for group in lay.groups:
            crops = window_crops(resized, group)
            tm = window_token_masks(m_t, lay, group, cfg) if need_tm else None
            wfeats.append(self.runner.features(crops, tm))
        return lay, gfeat, wfeats

    @torch.no_grad()
    def embed_masks(self, image: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Unnormalised mask embeddings (paper Eq. 10 with GSW, docs/reference-code.md §2-3).

        Args:
            image: (H, W, 3) uint8 RGB.
            masks: (M, H, W) bool, M >= 1, every mask non-empty (or a ``MaskSet``: its ``.masks``).
        Returns:
            (M, D) float32.
        """
        if not isinstance(masks, np.ndarray) and hasattr(masks, "masks"):
            masks = masks.masks
        image = check_image(image)
        masks = check_masks(masks, image.shape[:2])
        lay, gfeat, wfeats = self.pass_features(image, masks)
        m_t = torch.from_numpy(masks).to(self.device)
        emb = gsw_pool(m_t, lay, gfeat, wfeats, window_antialias=self.cfg.window_antialias)
        return emb.cpu().numpy().astype(np.float32, copy=False)

    @torch.no_grad()
    def embed_masks_batch(self, images: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`embed_masks` of several images with the heavy passes batched across them: the window crops of
        equal window size of all images run as one tower batch, global passes of equal size too (the joint and
        no-bias presets; the per-mask preset runs image by image). Each image's token masks are padded with
        empty masks to the largest M of the batch, which leaves the joint bias unchanged.

        Args:
            images: list of (H_i, W_i, 3) uint8 RGB; masks: list of (M_i, H_i, W_i) bool (M_i >= 1).
        Returns:
            list of (M_i, D) float32.
        """
        if len(images) != len(masks):
            raise InputError(f"{len(images)} images but {len(masks)} mask arrays")
        masks = [m.masks if (not isinstance(m, np.ndarray) and hasattr(m, "masks")) else m for m in masks]
        images = [check_image(im) for im in images]
        masks = [check_masks(m, im.shape[:2]) for im, m in zip(images, masks)]
        if len(images) <= 1 or self.cfg.bias == "per_mask":
            return [self.embed_masks(im, m) for im, m in zip(images, masks)]
        cfg, dev = self.cfg, self.device
        need_tm = cfg.bias != "none"
        Mmax = max(m.shape[0] for m in masks)
        # jobs: key (crop size) -> list of (image index, slot, crops (n, 3, h, w), token masks (n, Mmax, L) | None)
        jobs: dict[tuple[int, int], list] = {}
        lays, m_ts = [], []
        for i, (im, m) in enumerate(zip(images, masks)):
            lay = self.layout(im.shape[:2])
            lays.append(lay)
            resized = normalize_image(resize_image(im, lay.resized_hw), cfg.image_mean, cfg.image_std, dev)
            m_t = torch.from_numpy(m).to(dev)
            m_ts.append(m_t)

            def pad(tm: torch.Tensor) -> torch.Tensor:
                if tm.shape[1] == Mmax:
                    return tm
                z = torch.zeros(tm.shape[0], Mmax - tm.shape[1], tm.shape[2], dtype=tm.dtype, device=tm.device)
                return torch.cat([tm, z], 1)

            if lay.has_global:
                Hr, Wr = lay.resized_hw
                tm = pad(global_token_masks(m_t, (Hr // self.patch, Wr // self.patch),
                                            cfg.token_downsample)[None]) if need_tm else None
                jobs.setdefault((Hr, Wr), []).append((i, "g", resized[None], tm))
            for j, group in enumerate(lay.groups):
                crops = window_crops(resized, group)
                tm = pad(window_token_masks(m_t, lay, group, cfg)) if need_tm else None
                jobs.setdefault(tuple(crops.shape[-2:]), []).append((i, j, crops, tm))
        gfeat: list = [None] * len(images)
        wfeat: list[dict] = [{} for _ in images]
        for items in jobs.values():
            x = torch.cat([c for _, _, c, _ in items], 0)
            tm = torch.cat([t for _, _, _, t in items], 0) if need_tm else None
            out = self.runner.features(x, tm)
            s = 0
            for i, slot, c, _ in items:
                part = out[s: s + c.shape[0]]
                s += c.shape[0]
                if slot == "g":
                    gfeat[i] = part[0]
                else:
                    wfeat[i][slot] = part
        res = []
        for i in range(len(images)):
            wf = [wfeat[i][j] for j in range(len(lays[i].groups))]
            emb = gsw_pool(m_ts[i], lays[i], gfeat[i], wf, window_antialias=cfg.window_antialias)
            res.append(emb.cpu().numpy().astype(np.float32, copy=False))
        return res

    # ------------------------------------------------------------------ text side
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        return self._tokenizer

    @torch.no_grad()
    def encode_text(
        self, class_names: list[str] | tuple[str, ...], templates: str | list[str] = "vild"
    ) -> np.ndarray:
        """Text embeddings (docs/reference-code.md §4): per template encode ``template.format(name)``, L2-normalise,
        average over templates, L2-normalise. Cached per (names, templates).

        Returns:
            (K, D) float32, unit rows.
        """
        if isinstance(class_names, str) or not isinstance(class_names, (list, tuple)) or not class_names:
            raise InputError(f"class_names must be a non-empty list of strings, got {class_names!r}")
        for n in class_names:
            if not isinstance(n, str) or not n.strip():
                raise InputError(f"every class name must be a non-empty string, got {n!r}")
        tmpl = get_templates(templates)
        key = (tuple(class_names), tmpl)
        hit = self._text_cache.get(key)
        if hit is not None:
            return hit.copy()
        prompts = [t.format(n) for t in tmpl for n in class_names]
        feats = []
        for s in range(0, len(prompts), 512):
            tok = self.tokenizer(prompts[s: s + 512]).to(self.device)
            feats.append(F.normalize(self.text_encoder.encode(tok).float().to(self.device), dim=-1))
        f = torch.cat(feats, 0).view(len(tmpl), len(class_names), -1).mean(0)
        out = F.normalize(f, dim=-1).cpu().numpy().astype(np.float32)
        self._text_cache[key] = out
        return out.copy()

    def logits(self, mask_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
        """``logit_scale`` * cos(e, t): (M, D), (K, D) -> (M, K) float32 (both sides L2-normalised here)."""
        e = np.asarray(mask_emb, dtype=np.float32)
        t = np.asarray(text_emb, dtype=np.float32)
        if e.ndim != 2 or t.ndim != 2 or e.shape[1] != t.shape[1]:
            raise InputError(f"mask_emb (M, D) and text_emb (K, D) must share D, got {e.shape} and {t.shape}")
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
        return (self.logit_scale * (e @ t.T)).astype(np.float32)
