"""Engine runtime: load an engine directory and run MaskGenerator / DBAClip on its graphs.

    eng = Engine.load("engines/vitb-fp32")                      # validates manifest + files
    gen = eng.attach(MaskGenerator.from_pretrained("vit_b", ...))  # same Sam weights as the build
    clip = eng.attach(DBAClip.from_pretrained("ViT-B-16", ...))
    masks = gen.generate(image); emb = clip.embed_masks(image, masks.masks)

``attach`` returns a *new* generator / encoder object that shares the PyTorch model (used for
pre/post-processing and to check that the weights match the manifest) and routes the heavy parts to
the engine:

* :class:`EngineSamPredictor` (a ``segment_anything.SamPredictor``): ``set_torch_image`` runs the
  ``sam_encoder`` graph instead of ``sam.image_encoder``; ``predict_torch`` runs the ``sam_decoder`` graph
  (prompt batch, multimask) and keeps SAM's own ``postprocess_masks``; everything else of automatic mask
  generation (thresholds, stability, NMS, crops, RSW) is tusss' unchanged Python code.
* :class:`EngineTowerRunner` (a ``tusss.clip.block.TowerRunner``): ``features`` builds the attention bias
  with ``tusss.clip.attention.build_attention_bias`` and runs the ``clip_windows`` graph.
* :class:`_TextModel`: the CLIP model seen by ``DBAClip.encode_text``, whose ``encode_text`` runs
  ``clip_text``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from segment_anything import SamPredictor

import tusss
from tusss.errors import InputError

from .errors import BackendUnavailableError, EngineMismatchError
from .graphs import OrtGraph, run_chunked
from .manifest import Manifest, read_manifest

_BATCH_AXIS = {
    "sam_encoder": ("N", ["images"]),
    "sam_decoder": ("B", ["point_coords", "point_labels"]),
    "clip_windows": ("N", ["pixels", "bias"]),
    "clip_text": ("K", ["tokens", "eot"]),
}


def _minor(v: str) -> tuple[str, ...]:
    return tuple(str(v).split(".")[:2])


class Engine:
    """A loaded engine directory: manifest + one runner per graph.

    Attributes:
        path: the directory.  manifest: its :class:`Manifest`.  graphs: ``{name: OrtGraph | TrtGraph}``.
        backend: "onnxruntime" or "tensorrt".
    """

    def __init__(self, path: Path, manifest: Manifest, graphs: dict[str, Any], backend: str) -> None:
        self.path = path
        self.manifest = manifest
        self.graphs = graphs
        self.backend = backend

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        backend: str | None = None,
        providers: list[str] | None = None,
        verify: str = "hash",
        threads: int = 0,
    ) -> Engine:
        """Load and validate an engine directory.

        Args:
            path: directory written by ``tusss-engine build``.
            backend: None = the manifest's; "onnxruntime" also runs the ONNX graphs of a TensorRT build.
            providers: ONNX Runtime execution providers (default CUDA when usable, else CPU).
            verify: "hash" (sha256 of every file), "size" (sizes only) or "none".
            threads: ONNX Runtime intra-op threads (0 = default).

        Raises:
            CorruptFileError: missing/invalid manifest, missing, truncated or modified files.
            EngineMismatchError: built by another tusss version, or the plan's TensorRT version differs.
            BackendUnavailableError: TensorRT requested where it cannot run.
        """
        p = Path(path)
        man = read_manifest(p)
        if _minor(man.tusss_version) != _minor(tusss.__version__):
            raise EngineMismatchError(
                f"engine {p} was built by tusss {man.tusss_version}, this is tusss {tusss.__version__}: "
                "graphs and manifest may differ between versions; rebuild it with `tusss-engine build`"
            )
        if verify not in ("hash", "size", "none"):
            raise InputError(f"verify must be 'hash', 'size' or 'none', got {verify!r}")
        if verify != "none":
            man.verify_files(p, hashes=verify == "hash")
        be = backend or man.backend
        if be == "tensorrt" and man.backend != "tensorrt":
            raise EngineMismatchError(f"engine {p} holds no TensorRT plans (built for {man.backend}); "
                                      "rebuild with --backend tensorrt")
        graphs: dict[str, Any] = {}
        if be == "tensorrt":
            from .tensorrt import TrtGraph, require_tensorrt

            trt = require_tensorrt()
            built = man.versions.get("tensorrt")
            if built and built != trt.__version__:
                raise EngineMismatchError(
                    f"engine {p} was built with TensorRT {built}, this machine has {trt.__version__}; "
                    "TensorRT plans are tied to the version that built them: rebuild"
                )
            for name, g in man.graphs.items():
                graphs[name] = TrtGraph(p / g.plan, g)
        elif be == "onnxruntime":
            for name, g in man.graphs.items():
                graphs[name] = OrtGraph(p / g.onnx, g.inputs, list(g.outputs), providers, threads, man.precision)
        else:
            raise BackendUnavailableError(f"unknown backend {be!r}")
        return cls(p, man, graphs, be)

    # ------------------------------------------------------------------ raw graph calls
    def graph(self, name: str) -> Any:
        if name not in self.graphs:
            raise EngineMismatchError(
                f"engine {self.path} has no '{name}' graph (built: {sorted(self.graphs)}); rebuild with it"
            )
        return self.graphs[name]

    def run(self, name: str, **feeds: torch.Tensor) -> list[torch.Tensor]:
        """Run graph ``name``, splitting its batch axis into chunks within the manifest range."""
        g = self.graph(name)
        sym, batched = _BATCH_AXIS[name]
        hi = self.manifest.graphs[name].ranges.get(sym, [1, 1, 1 << 30])[2]
        return run_chunked(g.run, feeds, batched, int(hi))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) pre-processed SAM input -> (N, C, S/16, S/16) image embeddings."""
        return self.run("sam_encoder", images=images)[0]

    def decode_prompts(
        self, image_embedding: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, C, h, w), (B, 1, 2) 1024-frame coords, (B, 1) labels -> ((B, 3, 4h, 4w) logits, (B, 3) IoU)."""
        if image_embedding.shape[0] != 1:
            raise InputError(f"decode_prompts takes one image embedding, got batch {image_embedding.shape[0]}")
        m, i = self.run("sam_decoder", image_embeddings=image_embedding, point_coords=point_coords.float(),
                        point_labels=point_labels.float())
        return m, i

    def clip_windows(self, pixels: torch.Tensor, pos_embed: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W), (L, width), (N, L, L) -> (N, h*w, D) DBA-CLIP token features."""
        return self.run("clip_windows", pixels=pixels, pos_embed=pos_embed, bias=bias)[0]

    def text_features(self, tokens: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """(K, T) int64 tokens, (K,) EOT positions -> (K, D) un-normalised text features."""
        return self.run("clip_text", tokens=tokens.long(), eot=eot.long())[0]

    # ------------------------------------------------------------------ compatibility
    def check_sam(self, sam: torch.nn.Module, *, weights: bool = True) -> None:
        """Raise EngineMismatchError unless ``sam`` is the model the SAM graphs were built from."""
        from tusss.export.onnx_io import state_dict_hash

        meta = self.manifest.sam
        if not meta:
            raise EngineMismatchError(f"engine {self.path} has no SAM graphs")
        if int(sam.image_encoder.img_size) != int(meta["img_size"]):
            raise EngineMismatchError(
                f"engine {self.path} was built for SAM input size {meta['img_size']}, the model has "
                f"{sam.image_encoder.img_size} (another model type: engine {meta.get('model_type')})"
            )
        if weights and state_dict_hash(sam) != meta["weights_sha256"]:
            raise EngineMismatchError(
                f"engine {self.path} was built from other SAM weights ({meta.get('model_type')}, "
                f"{meta.get('weights')}); rebuild it from these weights"
            )

    def check_clip(self, model: torch.nn.Module, cfg: Any, *, weights: bool = True) -> None:
        """Raise EngineMismatchError unless ``model``/``cfg`` match what the CLIP graphs were built from."""
        from tusss.export.clip import GRAPH_CONFIG_FIELDS
        from tusss.export.onnx_io import state_dict_hash

        meta = self.manifest.clip
        if not meta:
            raise EngineMismatchError(f"engine {self.path} has no CLIP graphs")
        built = meta.get("graph_config", {})
        diff = {k: (built.get(k), getattr(cfg, k, None)) for k in GRAPH_CONFIG_FIELDS
                if built.get(k) != getattr(cfg, k, None)}
        if diff:
            raise EngineMismatchError(
                f"engine {self.path} was built for DBA-CLIP preset {meta.get('preset')!r}; these last-block "
                f"settings differ (engine, runtime): {diff}; rebuild with the runtime's preset"
            )
        if getattr(cfg, "bias", "joint") == "per_mask":
            raise EngineMismatchError("the engine runs joint-bias presets only (bias='per_mask' is not supported)")
        if weights and state_dict_hash(model) != meta["weights_sha256"]:
            raise EngineMismatchError(
                f"engine {self.path} was built from other CLIP weights ({meta.get('model')}, "
                f"{meta.get('weights')}); rebuild it from these weights"
            )

    # ------------------------------------------------------------------ adapters
    def attach(self, obj: Any, *, check_weights: bool = True) -> Any:
        """A copy of a ``MaskGenerator`` or ``DBAClip`` that runs on this engine (weights checked)."""
        from tusss.clip.model import DBAClip
        from tusss.masks.generator import MaskGenerator

        if isinstance(obj, MaskGenerator):
            self.check_sam(obj.sam, weights=check_weights)
            for g in ("sam_encoder", "sam_decoder"):
                self.graph(g)
            gen = MaskGenerator(obj.sam, obj.config, model_type=obj.model_type, weights_id=obj._weights_id)
            # hook: the generator's SamPredictor (segment_anything API) is replaced by the engine's
            gen._amg.predictor = EngineSamPredictor(obj.sam, self)
            gen.engine = self
            return gen
        if isinstance(obj, DBAClip):
            self.check_clip(obj.model, obj.cfg, weights=check_weights)
            clip = copy.copy(obj)
            clip.runner = EngineTowerRunner(obj.model.visual, obj.cfg, self)
            if "clip_text" in self.graphs:
                clip.model = _TextModel(obj.model, self)
                clip._text_cache = {}
            clip.engine = self
            return clip
        raise InputError(f"Engine.attach takes a MaskGenerator or a DBAClip, got {type(obj).__name__}")


class EngineSamPredictor(SamPredictor):
    """``SamPredictor`` whose image encoder and prompt decoder run on an :class:`Engine`."""

    def __init__(self, sam: torch.nn.Module, engine: Engine) -> None:
        super().__init__(sam)
        self.engine = engine

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        # segment_anything's set_torch_image with the encoder call routed to the engine
        S = self.model.image_encoder.img_size
        if transformed_image.ndim != 4 or transformed_image.shape[1] != 3 or max(transformed_image.shape[2:]) != S:
            raise InputError(
                f"set_torch_image input must be BCHW with long side {S}, got {tuple(transformed_image.shape)}"
            )
        self.reset_image()
        self.original_size = original_image_size
        self.input_size = tuple(transformed_image.shape[-2:])
        input_image = self.model.preprocess(transformed_image)
        self.features = self.engine.encode_images(input_image).to(self.device)
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
            raise InputError("the engine's SAM decoder takes point prompts with multimask_output=True only")
        low, iou = self.engine.decode_prompts(self.features, point_coords, point_labels)
        low, iou = low.to(self.device), iou.to(self.device)
        masks = self.model.postprocess_masks(low, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low


def _tower_runner_cls() -> type:
    from tusss.clip.block import TowerRunner

    return TowerRunner


class EngineTowerRunner(_tower_runner_cls()):  # type: ignore[misc]
    """``TowerRunner`` whose full pass (trunk + modified last block + readout) runs on an :class:`Engine`."""

    def __init__(self, visual: torch.nn.Module, cfg: Any, engine: Engine) -> None:
        super().__init__(visual, cfg)
        self.engine = engine

    @torch.no_grad()
    def features(self, images: torch.Tensor, token_masks: torch.Tensor | None) -> torch.Tensor:
        """(B, 3, H, W), (B, M, h*w) bool or None -> (B, h, w, D), as ``TowerRunner.features``."""
        from tusss.clip.attention import build_attention_bias

        cfg = self.cfg
        if cfg.bias == "per_mask":
            raise InputError("the engine runs joint-bias presets only (bias='per_mask' is not supported)")
        B, _, H, W = images.shape
        h, w = H // self.patch, W // self.patch
        L = h * w + 1
        pos = self.pos_embed((h, w)).float()
        if token_masks is None or cfg.bias == "none" or cfg.attention == "identity":
            bias = torch.zeros(B, L, L, dtype=torch.float32)
        else:
            bias = build_attention_bias(token_masks, bias_value=cfg.bias_value, cls_visible=cfg.cls_visible,
                                        force_diagonal=cfg.force_diagonal, dtype=torch.float32)
        out = self.engine.clip_windows(images.float(), pos, bias)
        return out.reshape(B, h, w, -1).to(images.device)


class _TextModel:
    """The CLIP model as ``DBAClip.encode_text`` sees it, with ``encode_text`` on the engine's text graph."""

    def __init__(self, model: torch.nn.Module, engine: Engine) -> None:
        self._model = model
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        eot = eot_positions(self._model, tokens)
        f = self._engine.text_features(tokens, eot).to(tokens.device)
        return torch.nn.functional.normalize(f, dim=-1) if normalize else f


def eot_positions(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(K,) index of the token whose feature open_clip pools (``text_pool_type`` of the model)."""
    kind = getattr(model, "text_pool_type", "argmax")
    if kind == "argmax":
        return tokens.argmax(dim=-1)
    if kind == "last":
        return torch.full((tokens.shape[0],), tokens.shape[1] - 1, dtype=torch.int64)
    if kind == "first":
        return torch.zeros(tokens.shape[0], dtype=torch.int64)
    if kind == "eos":
        return (tokens == model.text_eos_id).int().argmax(dim=-1)
    raise InputError(f"text pool type {kind!r} is not supported by the engine's text graph")
