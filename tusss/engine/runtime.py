"""Engine runtime: load an engine directory and run MaskGenerator / DBAClip on its graphs.

    eng = Engine.load("engines/vitb-fp32")                      # validates manifest + files
    gen = eng.attach(MaskGenerator.from_pretrained("vit_b", ...))  # same Sam weights as the build
    clip = eng.attach(DBAClip.from_pretrained("ViT-B-16", ...))
    masks = gen.generate(image); emb = clip.embed_masks(image, masks.masks)

``attach`` returns a *new* generator / encoder object that shares the PyTorch model (used for
pre/post-processing and to check that the weights match the manifest) and routes the heavy parts to
the engine through the objects' public backend seams (nothing private of them is written):

* :class:`EngineSamBackend` (a :class:`tusss.masks.generator.SamBackend`): the generator's image encoder runs
  the ``sam_encoder`` graph and its prompt-batched decoder the ``sam_decoder`` graph; SAM's own
  pre/post-processing and everything else of automatic mask generation (thresholds, stability, NMS, crops,
  RSW) is tusss' unchanged Python code. The generator's mask-cache key carries the backend and precision.
* :class:`EngineTowerRunner` (a ``tusss.clip.block.TowerRunner``): ``features`` builds the attention bias
  with ``tusss.clip.attention.build_attention_bias`` and runs the ``clip_windows`` graph.
* :class:`EngineTextEncoder` (a :class:`tusss.clip.model.TextEncoder`): runs ``clip_text``.

``Engine.calls`` counts the runs of each graph (one per chunk), so a caller can see which graphs ran.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import torch

import tusss
from tusss.clip.model import TextEncoder
from tusss.errors import InputError
from tusss.masks.generator import BackendSamPredictor, SamBackend

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
        self.calls: Counter[str] = Counter()  # graph name -> number of runs (chunks) since load
        self._calls_lock = threading.Lock()

    @property
    def precision(self) -> str:
        return self.manifest.precision

    @property
    def providers(self) -> list[str]:
        """Execution providers in use (ONNX Runtime), or ``["TensorRT"]``."""
        return sorted({p for g in self.graphs.values() for p in getattr(g, "providers", ["TensorRT"])})

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
        elif be == "inductor" or man.backend == "inductor":  # AOTInductor packages (no ONNX files to fall back to)
            from .inductor import load_graphs

            if be != man.backend:
                raise EngineMismatchError(
                    f"engine {p} was built for {man.backend} and has no {be} graphs; rebuild with --backend {be}"
                    if be == "inductor" else
                    f"engine {p} holds AOTInductor packages only (built for inductor), not {be} graphs; "
                    f"rebuild with --backend {be}")
            graphs = load_graphs(p, man)
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

        def counted(f: Any) -> list[torch.Tensor]:
            with self._calls_lock:
                self.calls[name] += 1
            return g.run(f)

        return run_chunked(counted, feeds, batched, int(hi))

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
            gen = obj.with_backend(EngineSamBackend(self))
            gen.engine = self
            return gen
        if isinstance(obj, DBAClip):
            self.check_clip(obj.model, obj.cfg, weights=check_weights)
            text = EngineTextEncoder(obj.model, self) if "clip_text" in self.graphs else None
            clip = obj.with_backend(runner=EngineTowerRunner(obj.model.visual, obj.cfg, self), text_encoder=text)
            clip.engine = self
            return clip
        raise InputError(f"Engine.attach takes a MaskGenerator or a DBAClip, got {type(obj).__name__}")


class EngineSamBackend(SamBackend):
    """:class:`tusss.masks.generator.SamBackend` on an engine's ``sam_encoder`` / ``sam_decoder`` graphs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.name = engine.backend
        self.precision = engine.precision

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.engine.encode_images(images).to(images.device)

    def decode(
        self, image_embedding: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        low, iou = self.engine.decode_prompts(image_embedding, point_coords, point_labels)
        return low.to(image_embedding.device), iou.to(image_embedding.device)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "precision": self.precision, "providers": self.engine.providers,
                "engine": str(self.engine.path)}


class EngineSamPredictor(BackendSamPredictor):
    """``SamPredictor`` whose image encoder and prompt decoder run on an :class:`Engine`."""

    def __init__(self, sam: torch.nn.Module, engine: Engine) -> None:
        super().__init__(sam, EngineSamBackend(engine))
        self.engine = engine


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


class EngineTextEncoder(TextEncoder):
    """:class:`tusss.clip.model.TextEncoder` on an engine's ``clip_text`` graph (``model``: for the EOT rule)."""

    def __init__(self, model: torch.nn.Module, engine: Engine) -> None:
        self.model = model
        self.engine = engine
        self.name = engine.backend

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        eot = eot_positions(self.model, tokens)
        return self.engine.text_features(tokens, eot).to(tokens.device)


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
