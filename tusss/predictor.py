"""`tusss.Predictor`: the one object to embed in an inference service (image -> label map).

::

    p = Predictor.from_pretrained(sam="vit_h", clip="ViT-B-16", vocabulary="voc21")            # PyTorch
    p = Predictor.from_engine("engines/vith-fp16", glcc="runs/voc-weak/glcc")                  # engine + GLCC
    seg = p.predict(image)              # Segmentation: label_map, labels, scores, conf, masks, class_names, timings
    segs = p.predict_batch([im1, im2])  # heavy stages (SAM encoder, DBA-CLIP windows) batched across images

Stages per image: masks (given, or SAM automatic mask generation), drop empty masks, mask embeddings
(DBA-CLIP), classification (:mod:`tusss.classify`: text or GLCC, one interface), painting
(:func:`tusss.labels.paint_labels`, ascending (level, conf) order, uncovered pixels = the classifier's fill).

Warm state: the classifier's text embeddings (per vocabulary / class list, LRU of per-request class lists) and
the GLCC's kNN index are built once by :meth:`Predictor.warm_up`; the towers' positional-embedding caches and
the engine sessions stay loaded.

Thread safety: one predictor may be called from several threads. The model stages (SAM, DBA-CLIP, the
classifier) run under one re-entrant lock (``Predictor.lock``), so concurrent calls serialise on the models
(the networks and their caches are not re-entrant); image checks and painting run outside it. To run stages of
several requests together, batch them with :meth:`predict_batch` (what ``tusss serve`` does).

GLCC provenance: a GLCC records the identity of the embedder it was fitted with (CLIP model, weights sha256,
preset, config hash) and the mask configuration; the predictor refuses one whose embedder differs, naming the
fields (:func:`tusss.classify.check_provenance`).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np

from tusss.classify import Classifier, GLCCClassifier, TextClassifier, check_provenance
from tusss.errors import InputError
from tusss.labels import paint_labels
from tusss.masks.maskset import MaskSet
from tusss.pipeline import Segmentation
from tusss.validate import check_image

__all__ = ["Predictor", "Segmentation"]

STAGES = ("masks", "embed", "classify", "paint")


def _drop_empty(ms: MaskSet) -> MaskSet:
    if len(ms) and (ms.area <= 0).any():
        nz = np.asarray(ms.masks.reshape(len(ms), -1).any(1))
        if not nz.all():
            ms = ms.subset(np.flatnonzero(nz))
    return ms


class Predictor:
    """Masks -> DBA-CLIP embeddings -> classifier -> label map (module docstring).

    Args:
        mask_generator: a :class:`tusss.masks.MaskGenerator` (any backend), or None when masks are always given.
        clip: a :class:`tusss.clip.DBAClip` (any backend).
        classifier: a :class:`tusss.classify.Classifier`.
        engine: the :class:`tusss.engine.runtime.Engine` the models run on, if any (for :meth:`info`).
        check_glcc: verify a GLCC classifier's provenance against ``clip`` (and the generator's mask config).
    """

    def __init__(self, mask_generator: Any, clip: Any, classifier: Classifier, *, engine: Any = None,
                 check_glcc: bool = True, text_options: dict[str, Any] | None = None) -> None:
        if clip is None:
            raise InputError("Predictor needs a DBAClip (clip=...)")
        if not isinstance(classifier, Classifier):
            raise InputError(f"classifier must be a tusss.classify.Classifier, got {type(classifier).__name__}")
        self.mask_generator = mask_generator
        self.clip = clip
        self.classifier = classifier
        self.engine = engine
        self.lock = threading.RLock()
        self.ready = False
        self._text_options = dict(text_options or {})
        self._class_cache: OrderedDict[tuple, TextClassifier] = OrderedDict()
        if isinstance(classifier, GLCCClassifier):
            if classifier.dim != clip.embed_dim:
                raise InputError(f"GLCC was fitted on D = {classifier.dim} embeddings, the CLIP model gives "
                                 f"D = {clip.embed_dim}")
            if check_glcc:
                check_provenance(classifier.provenance, self.identity())

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _classifier(clip: Any, vocabulary: str | None, classes: Any, glcc: Any, text_options: dict) -> Classifier:
        if glcc is not None:
            if vocabulary is not None or classes is not None:
                raise InputError("give one of vocabulary=, classes= or glcc= (a GLCC has its own classes)")
            return GLCCClassifier(glcc)
        if vocabulary is None and classes is None:
            raise InputError("give one of vocabulary= (e.g. 'voc21'), classes= (e.g. 'cat,dog') or glcc= (a "
                             "fitted GLCC directory)")
        return TextClassifier(clip, vocabulary=vocabulary, classes=classes, **text_options)

    @classmethod
    def from_pretrained(
        cls,
        sam: str = "vit_h",
        checkpoint: str | os.PathLike | None = "official",
        clip: str = "ViT-B-16",
        weights: str | os.PathLike | None = "openai",
        engine: Any = None,
        vocabulary: str | None = None,
        classes: str | list[str] | None = None,
        glcc: Any = None,
        mask_options: dict[str, Any] | None = None,
        device: str = "cpu",
        *,
        clip_options: dict[str, Any] | None = None,
        mask_preset: str = "tuss",
        clip_preset: str = "reference",
        seed: int = 0,
        **text_options: Any,
    ) -> Predictor:
        """Build SAM + DBA-CLIP by name and a classifier.

        Args:
            sam, checkpoint: SAM model type and weights (``"official"``, a path, or ``"random"`` / None).
            clip, weights: open_clip architecture and weights (``"openai"``, a path, or ``"random"`` / None).
            engine: an engine directory or :class:`~tusss.engine.runtime.Engine` built from these weights: the
                models run on its graphs (weights checked against its manifest).
            vocabulary / classes / glcc: the classifier (exactly one): a named vocabulary, a class list, or a
                fitted GLCC (directory or object).
            mask_options: :class:`tusss.masks.MaskGenConfig` overrides (``points_per_side`` ...).
            device: torch device of the PyTorch models.
            clip_options: :class:`tusss.clip.DBAClipConfig` overrides (part of the embedder identity).
            mask_preset, clip_preset: presets of the mask generator and DBA-CLIP.
            seed: torch seed drawn before random weights (SAM first, then CLIP, as ``tusss-engine build``).
            **text_options: text classifier options (``templates``, ``background``, ``bg_alpha``, ``fill`` ...).
        """
        import torch

        from tusss.clip.model import DBAClip
        from tusss.masks.generator import MaskGenerator
        from tusss.weights import parse_weight_source

        ck = parse_weight_source(checkpoint) if checkpoint is not None else None
        w = parse_weight_source(weights, official="openai") if weights is not None else None
        if ck is None or w is None:
            torch.manual_seed(seed)
        gen = MaskGenerator.from_pretrained(sam, checkpoint=ck, preset=mask_preset, device=device,
                                            **(mask_options or {}))
        dba = DBAClip.from_pretrained(clip, weights=w, preset=clip_preset, device=device, **(clip_options or {}))
        eng = None
        if engine is not None:
            from tusss.engine.runtime import Engine

            eng = engine if isinstance(engine, Engine) else Engine.load(engine)
            gen, dba = eng.attach(gen), eng.attach(dba)
        clf = cls._classifier(dba, vocabulary, classes, glcc, text_options)
        return cls(gen, dba, clf, engine=eng, text_options=text_options)

    @classmethod
    def from_engine(
        cls,
        engine_dir: str | os.PathLike,
        vocabulary: str | None = None,
        classes: str | list[str] | None = None,
        glcc: Any = None,
        backend: str | None = None,
        *,
        mask_options: dict[str, Any] | None = None,
        providers: list[str] | None = None,
        threads: int = 0,
        verify: str = "hash",
        **text_options: Any,
    ) -> Predictor:
        """Load an engine directory, rebuild the PyTorch models its manifest describes (model names, weight
        sources, presets, seed; weights checked against the manifest's sha256) and run them on its graphs.

        Args:
            engine_dir: directory written by ``tusss-engine build``.
            vocabulary / classes / glcc: the classifier (exactly one).
            backend: None = the manifest's backend; ``"onnxruntime"`` runs the ONNX graphs of a TensorRT build;
                ``"torch"`` runs the same weights in eager PyTorch (for comparison).
            mask_options: :class:`MaskGenConfig` overrides on top of the manifest's mask preset.
            providers, threads, verify: see :meth:`tusss.engine.runtime.Engine.load`.
        """
        from tusss.engine.manifest import read_manifest
        from tusss.engine.models import load_models
        from tusss.engine.runtime import Engine

        if backend not in (None, "torch", "onnxruntime", "tensorrt", "inductor"):
            raise InputError(f"backend must be None, 'torch', 'onnxruntime', 'tensorrt' or 'inductor', got {backend!r}")
        man = read_manifest(engine_dir)
        if not man.sam or not man.clip:
            raise InputError(f"engine {engine_dir} lacks SAM or CLIP graphs: a predictor needs both (rebuild it "
                             "with --sam and --clip)")
        s, c = man.sam, man.clip
        seeds = {s.get("seed", 0), c.get("seed", 0)}
        if len(seeds) != 1:
            raise InputError(f"engine {engine_dir}: SAM and CLIP were built with different seeds {sorted(seeds)}")
        models = load_models(s.get("model_type"), c.get("model"),
                             f"sam={s.get('weights', 'random')},clip={c.get('weights', 'random')}",
                             clip_preset=c.get("preset", "reference"), mask_preset=s.get("mask_preset", "tuss"),
                             seed=int(seeds.pop()), mask_overrides=mask_options)
        gen, dba = models.mask_generator, models.dbaclip
        eng = None
        if backend == "torch":  # same weights, eager PyTorch: check they are the engine's
            from tusss.export.onnx_io import state_dict_hash

            if state_dict_hash(gen.sam) != s.get("weights_sha256") or state_dict_hash(dba.model) != c.get(
                    "weights_sha256"):
                raise InputError(f"the rebuilt PyTorch models do not have the weights of engine {engine_dir}")
        else:
            eng = Engine.load(engine_dir, backend=backend, providers=providers, threads=threads, verify=verify)
            gen, dba = eng.attach(gen), eng.attach(dba)
        clf = cls._classifier(dba, vocabulary, classes, glcc, text_options)
        return cls(gen, dba, clf, engine=eng, text_options=text_options)

    # ------------------------------------------------------------------ identity / info
    def identity(self) -> dict[str, Any]:
        """The embedder identity (``DBAClip.identity()``) + ``mask_config_hash`` of the mask configuration
        (model type, weights and config; independent of the backend)."""
        ident = dict(self.clip.identity())
        g = self.mask_generator
        if g is not None:
            ident["mask_config_hash"] = g.config.config_hash(g.model_type, g.weights_id)
        return ident

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.classifier.class_names

    @property
    def backend(self) -> str:
        return self.engine.backend if self.engine is not None else "torch"

    def info(self) -> dict[str, Any]:
        """JSON-able description: models, weights ids, backend + providers, precision, classifier, versions."""
        import torch

        import tusss

        g = self.mask_generator
        out: dict[str, Any] = {
            "tusss": tusss.__version__, "torch": torch.__version__,
            "backend": self.backend,
            "precision": self.engine.precision if self.engine is not None else "fp32",
            "providers": self.engine.providers if self.engine is not None else [str(self.clip.device)],
            "engine": str(self.engine.path) if self.engine is not None else None,
            "sam": None if g is None else {"model_type": g.model_type, "weights_id": g.weights_id,
                                           "mask_config_hash": g.config_hash, "backend": g.backend.info()},
            "clip": self.clip.identity(),
            "classifier": self.classifier.info(),
            "ready": self.ready,
        }
        try:
            import onnxruntime

            out["onnxruntime"] = onnxruntime.__version__
        except ImportError:  # pragma: no cover
            pass
        return out

    # ------------------------------------------------------------------ warm state
    def warm_up(self, image: np.ndarray | None = None) -> Predictor:
        """Build the warm state (classifier text embeddings / GLCC index) and run one image end to end (a
        synthetic 64 x 64 one by default). Sets :attr:`ready`."""
        with self.lock:
            self.classifier.warm_up()
            if image is None:
                rng = np.random.default_rng(0)
                image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.predict(image, masks=None if self.mask_generator is not None else _full_mask(image))
            self.ready = True
        return self

    def classifier_for(self, classes: str | list[str] | None) -> Classifier:
        """The predictor's classifier, or (text classifiers only) one for a per-request class list (kept in an
        LRU of 16, so its text embeddings are computed once)."""
        if classes is None:
            return self.classifier
        if not isinstance(self.classifier, TextClassifier):
            raise InputError("classes= overrides the class list of a text classifier only; this predictor "
                             f"classifies with a {self.classifier.kind} classifier")
        key = (classes,) if isinstance(classes, str) else tuple(classes)
        with self.lock:
            hit = self._class_cache.get(key)
            if hit is None:
                hit = TextClassifier(self.clip, classes=classes, **self._text_options)
                self._class_cache[key] = hit
                if len(self._class_cache) > 16:
                    self._class_cache.popitem(last=False)
            else:
                self._class_cache.move_to_end(key)
            return hit

    # ------------------------------------------------------------------ inference
    def _check_masks(self, image: np.ndarray, masks: MaskSet | None) -> MaskSet | None:
        if masks is None:
            if self.mask_generator is None:
                raise InputError("this predictor has no mask generator: pass masks=")
            return None
        if not isinstance(masks, MaskSet):
            raise InputError(f"masks must be a MaskSet, got {type(masks).__name__}")
        if masks.image_hw != image.shape[:2]:
            raise InputError(f"masks are for a {masks.image_hw} image but the image is {image.shape[:2]}")
        return masks

    def embed(self, image: np.ndarray, masks: MaskSet | None = None) -> tuple[MaskSet, np.ndarray]:
        """(MaskSet without empty masks, (M, D) float32 unnormalised mask embeddings) of one image."""
        image = check_image(image)
        given = self._check_masks(image, masks)
        with self.lock:
            ms = _drop_empty(self.mask_generator.generate(image) if given is None else given)
            emb = (self.clip.embed_masks(image, ms.masks) if len(ms)
                   else np.zeros((0, self.clip.embed_dim), np.float32))
        return ms, emb

    def _embed_batch(self, images: list[np.ndarray], given: list[MaskSet | None], tm: dict[str, float]
                     ) -> tuple[list[MaskSet], list[np.ndarray]]:
        """Masks (batched SAM encoder) + embeddings (batched DBA-CLIP passes); caller holds the lock."""
        t0 = time.perf_counter()
        todo = [i for i, m in enumerate(given) if m is None]
        sets: list[MaskSet] = list(given)  # type: ignore[arg-type]
        if todo:
            gen = self.mask_generator
            made = (gen.generate_batch([images[i] for i in todo]) if len(todo) > 1
                    else [gen.generate(images[todo[0]])])
            for i, ms in zip(todo, made):
                sets[i] = ms
        sets = [_drop_empty(ms) for ms in sets]
        t1 = time.perf_counter()
        tm["masks"] = t1 - t0
        nz = [i for i, ms in enumerate(sets) if len(ms)]
        embs = [np.zeros((0, self.clip.embed_dim), np.float32) for _ in images]
        if len(nz) > 1:
            for i, e in zip(nz, self.clip.embed_masks_batch([images[i] for i in nz], [sets[i].masks for i in nz])):
                embs[i] = e
        elif nz:
            embs[nz[0]] = self.clip.embed_masks(images[nz[0]], sets[nz[0]].masks)
        tm["embed"] = time.perf_counter() - t1
        return sets, embs

    def _check_batch(self, images: list[np.ndarray], masks: list[MaskSet | None] | None
                     ) -> tuple[list[np.ndarray], list[MaskSet | None]]:
        """Validated images and their given mask sets (None where SAM is to run), one per image."""
        if not isinstance(images, (list, tuple)) or not images:
            raise InputError("images must be a non-empty list of (H, W, 3) uint8 arrays")
        images = [check_image(im) for im in images]
        masks = list(masks) if masks is not None else [None] * len(images)
        if len(masks) != len(images):
            raise InputError(f"{len(images)} images but {len(masks)} mask sets")
        return images, [self._check_masks(im, m) for im, m in zip(images, masks)]

    def embed_batch(self, images: list[np.ndarray], masks: list[MaskSet | None] | None = None
                    ) -> list[tuple[MaskSet, np.ndarray]]:
        """:meth:`embed` of several images, heavy stages batched: list of (MaskSet, (M, D) float32)."""
        images, given = self._check_batch(images, masks)
        with self.lock:
            sets, embs = self._embed_batch(images, given, {})
        return list(zip(sets, embs))

    def predict(self, image: np.ndarray, masks: MaskSet | None = None,
                classes: str | list[str] | None = None) -> Segmentation:
        """Segment one image.

        Args:
            image: (H, W, 3) uint8 RGB.
            masks: a :class:`MaskSet` for it (e.g. from a mask cache); None = SAM automatic masks.
            classes: text classifiers only: a per-call class list instead of the predictor's.

        Returns:
            :class:`tusss.pipeline.Segmentation`: label_map (H, W) uint8 (int32 when K > 255), labels (M,) int64,
            scores (M, K) float32, conf (M,) float32, masks (empty masks dropped), class_names, timings
            (seconds per stage ``masks`` / ``embed`` / ``classify`` / ``paint`` and ``total``).
        """
        return self.predict_batch([image], None if masks is None else [masks], classes=classes)[0]

    def predict_batch(self, images: list[np.ndarray], masks: list[MaskSet | None] | None = None,
                      classes: str | list[str] | None = None) -> list[Segmentation]:
        """:meth:`predict` of several images; the SAM encoder and the DBA-CLIP tower passes run batched across
        them. Per-image ``timings`` hold the batch's stage times and ``batch_size``."""
        t_start = time.perf_counter()
        images, given = self._check_batch(images, masks)
        clf = self.classifier_for(classes)
        tm: dict[str, float] = {}
        with self.lock:
            sets, embs = self._embed_batch(images, given, tm)
            t2 = time.perf_counter()
            allemb = np.concatenate(embs, 0)
            scores, labels, conf = clf.classify(allemb) if len(allemb) else (
                np.zeros((0, clf.num_classes), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))
            tm["classify"] = time.perf_counter() - t2
        K = clf.num_classes
        dtype = np.uint8 if max(K, clf.fill + 1) <= 256 else np.int32
        out = []
        t3 = time.perf_counter()
        s = 0
        maps = []
        for im, ms in zip(images, sets):
            n = len(ms)
            lab = labels[s: s + n]
            cf = conf[s: s + n]
            maps.append(paint_labels(ms.masks, lab, ms.level, cf, fill=clf.fill, dtype=dtype) if n
                        else np.full(im.shape[:2], clf.fill, dtype))
            out.append((ms, scores[s: s + n], lab, cf))
            s += n
        tm["paint"] = time.perf_counter() - t3
        tm["total"] = time.perf_counter() - t_start
        res = []
        for (ms, sc, lab, cf), lm in zip(out, maps):
            res.append(Segmentation(lm, lab, sc, cf, ms, clf.class_names, logits=None,
                                    timings={**tm, "batch_size": len(images)}))
        return res


def _full_mask(image: np.ndarray) -> MaskSet:
    """A one-mask MaskSet covering the image (warm-up without a mask generator)."""
    m = np.ones((1, *image.shape[:2]), bool)
    return MaskSet(masks=m, level=np.full(1, 2, np.int8), predicted_iou=np.ones(1, np.float32),
                   stability=np.ones(1, np.float32))
