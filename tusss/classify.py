"""Mask classifiers behind one small interface, so that text (open-vocabulary) and GLCC labels go through the
same scoring and painting in :class:`tusss.Predictor`.

A classifier turns (M, D) float32 mask embeddings into ``(scores (M, K) float32, labels (M,) int64, conf (M,)
float32)`` over its ``class_names`` (K), with class 0 = background when ``has_background``:

* :class:`TextClassifier`: ``100 * cos`` against the CLIP text embeddings of a vocabulary / class list, scored
  exactly as :class:`tusss.pipeline.OVSegmenter` scores them (the same code: explicit / dustbin / no background,
  :func:`tusss.scoring.seed_on_logits`). Text embeddings are computed once per classifier (the text encoder's
  own cache keeps them per (names, templates)).
* :class:`GLCCClassifier`: a fitted :class:`tusss.glcc.GLCC` (probe + inductive label propagation); labels are the
  argmax of ``GLCC.predict``. Its kNN index over the training set is built once, at :meth:`warm_up`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tusss.errors import InputError

__all__ = ["Classifier", "TextClassifier", "GLCCClassifier", "ProvenanceError", "check_provenance"]


class ProvenanceError(InputError):
    """A fitted classifier was built on embeddings of another embedder (CLIP model, weights or preset) or of
    another mask configuration than the predictor's."""


class Classifier:
    """Interface: ``classify(embeddings)`` -> (scores (M, K), labels (M,), conf (M,)); ``class_names``;
    ``has_background``; ``fill`` (label of uncovered pixels); ``warm_up()``; ``info()``."""

    kind: str = "abstract"
    class_names: tuple[str, ...] = ()
    has_background: bool = False
    fill: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def warm_up(self) -> None:
        """Build everything that can be built once (text embeddings, indices)."""

    def classify(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "classes": list(self.class_names), "has_background": self.has_background}

    def _check(self, embeddings: np.ndarray, dim: int | None) -> np.ndarray:
        e = np.asarray(embeddings, dtype=np.float32)
        if e.ndim != 2 or (dim is not None and e.shape[1] != dim):
            raise InputError(f"embeddings must be (M, {dim if dim is not None else 'D'}), got {e.shape}")
        if not np.isfinite(e).all():
            raise InputError("embeddings contain NaN or infinite values")
        return e


class TextClassifier(Classifier):
    """Open-vocabulary classifier on CLIP text embeddings (see :class:`tusss.pipeline.OVSegmenter` for the
    arguments ``vocabulary`` / ``classes`` / ``templates`` / ``background`` / ``bg_alpha`` / ``bg_pow`` / ``fill``).

    Args:
        clip: the :class:`tusss.clip.DBAClip` whose text tower encodes the names (``encode_text``, ``logits``).
    """

    kind = "text"

    def __init__(self, clip: Any, vocabulary: str | None = None, classes: str | list[str] | None = None,
                 templates: str | list[str] | None = None, **options: Any) -> None:
        from tusss.pipeline import OVSegmenter

        self._seg = OVSegmenter(None, clip, vocabulary=vocabulary, classes=classes, templates=templates, **options)
        self.clip = clip
        self.class_names = self._seg.class_names
        self.has_background = self._seg.class_set.has_background
        self.fill = self._seg.fill
        self.source = self._seg.class_set.source

    def warm_up(self) -> None:
        self._seg.text_embeddings()

    def text_embeddings(self) -> np.ndarray:
        """(C, D) float32 unit text embeddings (computed once)."""
        return self._seg.text_embeddings()

    def classify(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        e = self._check(embeddings, getattr(self.clip, "embed_dim", None))
        logits = self.clip.logits(e, self.text_embeddings())
        return self._seg.score(logits)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "vocabulary": self.source, "bg_mode": self._seg.class_set.bg_mode}


class GLCCClassifier(Classifier):
    """A fitted :class:`tusss.glcc.GLCC` as a classifier: scores = ``GLCC.predict`` (M, K), label = argmax.

    Args:
        glcc: the fitted GLCC (or a directory written by ``GLCC.save``).
        class_names: override of the GLCC's own class names (default: the GLCC's, else ``class_<k>``).
    """

    kind = "glcc"

    def __init__(self, glcc: Any, class_names: list[str] | None = None) -> None:
        from tusss.glcc.model import GLCC

        if not isinstance(glcc, GLCC):
            glcc = GLCC.load(glcc)
        self.glcc = glcc
        K = glcc.num_classes
        names = class_names if class_names is not None else glcc.class_names
        if names is None:
            names = [("background" if (k == 0 and glcc.has_bg_) else f"class_{k}") for k in range(K)]
        if len(names) != K:
            raise InputError(f"{len(names)} class names for a GLCC with K = {K} classes")
        self.class_names = tuple(names)
        self.has_background = bool(glcc.has_bg_)
        self.fill = 0
        self.dim = int(glcc.X_.shape[1])
        self._warm = False

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(getattr(self.glcc, "provenance", None) or {})

    def warm_up(self) -> None:
        """Build the kNN index over the training embeddings once (GLCC keeps it warm for every later call)."""
        if self._warm:
            return
        index = getattr(self.glcc, "knn_index", None)
        if callable(index):
            index().build()  # GLCC keeps this KnnIndex (torch tensor on the device / faiss index) for every predict
        self.glcc.predict(self.glcc.X_[:1])  # and one tiny query through the whole path
        self._warm = True

    def classify(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        e = self._check(embeddings, self.dim)
        if e.shape[0] == 0:
            return np.zeros((0, self.num_classes), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32)
        scores = np.asarray(self.glcc.predict(e), dtype=np.float32)
        labels = scores.argmax(1).astype(np.int64)
        conf = scores[np.arange(len(labels)), labels].astype(np.float32)
        return scores, labels, conf

    def info(self) -> dict[str, Any]:
        g = self.glcc
        return {**super().info(), "supervision": g.kind_, "train_masks": int(g.X_.shape[0]),
                "knn_backend": g.config.knn_backend, "provenance": self.provenance}


#: provenance fields compared between a GLCC and the predictor's embedder (mask fields only when both have them)
EMBEDDER_FIELDS = ("clip_model", "clip_weights", "clip_preset", "clip_config")
MASK_FIELDS = ("mask_config_hash",)


def check_provenance(recorded: dict[str, Any] | None, current: dict[str, Any], what: str = "GLCC") -> None:
    """Raise :class:`ProvenanceError` naming every field of ``recorded`` (what the classifier was fitted on)
    that differs from ``current`` (the predictor's embedder identity + mask configuration).

    A classifier without recorded provenance (saved by an older tusss) is refused too: nothing says it was
    fitted on embeddings of this embedder. A differing mask configuration (both sides recorded) only warns.
    """
    if not recorded:
        raise ProvenanceError(
            f"{what} records no embedder identity (fitted by an older tusss, or saved without provenance): refit "
            f"it with `tusss fit` on embeddings of this CLIP model / weights / preset"
        )
    diff = {}
    for k in EMBEDDER_FIELDS:
        if recorded.get(k) != current.get(k):
            diff[k] = (recorded.get(k), current.get(k))
    for k in MASK_FIELDS:  # recorded and reported, not refused: the same embedder on other masks is valid input
        if recorded.get(k) and current.get(k) and recorded[k] != current[k]:
            import warnings

            warnings.warn(f"{what} was fitted on masks of another mask configuration ({k} {_short(recorded[k])} vs "
                          f"{_short(current[k])}); its scores may be less accurate on these masks", stacklevel=3)
    if diff:
        parts = ", ".join(f"{k}: fitted {_short(a)} vs predictor {_short(b)}" for k, (a, b) in diff.items())
        raise ProvenanceError(f"{what} was fitted on embeddings of another embedder; differing fields: {parts}. "
                              "Use the CLIP model, weights and preset it was fitted with, or refit it")


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 24 else s[:20] + "...'"
