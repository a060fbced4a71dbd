"""`GLCC`: the global-local consistent classifier (paper §4.2, docs/reference-code.md §6.3-6.6).

Construction (docs/reference-code.md §6.6, ``order="lp_first"``, the authors' code):

- full: probe on Y (GT fractions); P* := Y (no transductive step); inductive LP over the training graph.
- semi (1 round) and weak (2 rounds): P^c -> transductive LP (block CG) -> re-score the LP output image by
  image (docs/reference-code.md §5 "Transductive LP outputs"; rule per round, :meth:`GLCCConfig.lp_fg_for_round`): weak
  = L1, per-image min-max, bg^α over the image's classes (VOC round 1: a softmax-γ variant); semi = L1 and
  bg^α over all classes, no min-max, then the labelled rows overwritten by GT) = Y*
  -> probe on softmax(100·Y*) over the allowed classes -> [next round: P^c := the probe's re-scored
  training-set scores] -> ... The last Y* is the P* of the inductive step.
- ``order="probe_first"`` is the paper's text (probe on P^c first, then LP on the probe's P^r).

Prediction: ``p = s_probe + w · L1(āᵀP*)`` with the reference's suppression / bg exponents
(:func:`tusss.glcc.inductive.combine_scores`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tusss.errors import CorruptFileError, InputError
from tusss.glcc.inductive import CombineConfig, KnnIndex, combine_scores, inductive_bias
from tusss.glcc.knn import KnnGraph, build_graph, l2_normalize
from tusss.glcc.probe import LinearProbe, ProbeConfig, train_probe
from tusss.glcc.propagation import propagate
from tusss.persist import (
    atomic_directory,
    atomic_save_npy,
    atomic_write_text,
    corrupt,
    fault_point,
    load_npy,
    read_json,
)
from tusss.scoring import BgMethod, FgMethod, seed_table
from tusss.supervision import (
    FullSupervision,
    SemiSupervision,
    Supervision,
    SupervisionSpec,
    WeakSupervision,
    group_offsets,
    make_supervision_spec,
    prob2soft_label,
)
from tusss.validate import check_finite

__all__ = ["GLCC", "GLCCConfig", "FORMAT_VERSION", "default_combine"]

FORMAT_VERSION = 1
_FILES = ("train_embeddings.npy", "degree.npy", "pstar.npy", "probe_weight.npy")


def default_combine(kind: str) -> CombineConfig:
    """The reference's fixed test-set combination for each supervision (docs/reference-code.md §6.5)."""
    if kind == "full":  # VOC FS: w 2.0, LP scores not L1'd, bg α₂ = 2, probe α₁ = 4, final α₃ = 1
        return CombineConfig(w=2.0, lp_l1=False, alpha_probe=4.0, alpha_lp=2.0, alpha_final=1.0)
    return CombineConfig(w=1.5, lp_l1=True)  # VOC WSSS (semi's w is grid-searched; 1.5 used)


@dataclass
class GLCCConfig:
    """GLCC hyper-parameters (reference defaults; the reference tunes several on GT, see docs/reference-code.md §10.15).

    Attributes:
        k, alpha, gamma: graph neighbours, propagation magnitude, similarity exponent (50, 0.9, 1).
        rounds: bootstrap rounds (None -> weak 2, semi 1, full 1 without transductive LP).
        k_rounds: per-round k (None -> k every round; the VOC WSSS reference uses (50, 12)).
        k_bar: test-time neighbours (None -> k of the last graph).
        a_norm: Eq. 15 normalisation: "rigorous" (reference) | "paper" | "L1" | "none".
        order: "lp_first" (reference) | "probe_first" (paper text).
        knn_backend: kNN backend for the graph and for prediction (see tusss.glcc.knn).
        cg_tol, cg_maxiter, cg_backend: CG settings (1e-6, 200, auto).
        lp_alpha_bg: bg exponent when re-scoring LP outputs; probe_alpha_bg: when re-scoring the probe's
            training-set scores (reference tunes both in {1, .25, .5, 2, 4}).
        lp_alpha_bg_rounds: per-round bg exponents of the LP re-scoring (None -> ``lp_alpha_bg`` every round).
        lp_fg_rounds: per-round fg transform of the LP re-scoring (:class:`FgMethod` or its dict; None -> the
            rule of the supervision kind: weak ``{softmax None, norm True, bypath False, L1 True}``; semi
            ``{softmax None, norm False, L1 True}``, docs/reference-code.md §5 "Transductive LP outputs"). The VOC WSSS
            round 1 of the reference uses a softmax variant (``{softmax γ, norm True, bypath False, L1}``).
        lp_candidates: candidate classes of the LP re-scoring: "image" (train mode: the image's classes) or
            "all" (val mode); None -> "all" for semi (``cls_eval_dt.ini.val = True``), "image" otherwise.
        soft_gamma: probe targets = softmax(soft_gamma · score) over allowed classes (100).
        probe: :class:`ProbeConfig`.
        probe_rounds: per-round probe settings (iterations and warm-up differ per round in the reference,
            e.g. COCO-2014 480k then 240k iterations with a fixed 12k warm-up); None -> ``probe`` every round.
        combine: :class:`CombineConfig` (None -> :func:`default_combine` of the supervision kind).
    """

    k: int = 50
    alpha: float = 0.9
    gamma: float = 1.0
    rounds: int | None = None
    k_rounds: tuple[int, ...] | None = None
    k_bar: int | None = None
    a_norm: str = "rigorous"
    order: str = "lp_first"
    knn_backend: str = "torch"
    cg_tol: float = 1e-6
    cg_maxiter: int = 200
    cg_backend: str = "auto"
    lp_alpha_bg: float = 1.0
    probe_alpha_bg: float = 1.0
    soft_gamma: float = 100.0
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    combine: CombineConfig | None = None
    lp_alpha_bg_rounds: tuple[float, ...] | None = None
    lp_fg_rounds: tuple[FgMethod, ...] | None = None
    lp_candidates: str | None = None
    probe_rounds: tuple[ProbeConfig, ...] | None = None

    def __post_init__(self) -> None:
        if self.lp_fg_rounds is not None:
            self.lp_fg_rounds = tuple(FgMethod.from_dict(f) for f in self.lp_fg_rounds)
        if self.lp_alpha_bg_rounds is not None:
            self.lp_alpha_bg_rounds = tuple(float(a) for a in self.lp_alpha_bg_rounds)
        if self.probe_rounds is not None:
            self.probe_rounds = tuple(p if isinstance(p, ProbeConfig) else ProbeConfig(**p) for p in self.probe_rounds)
        if self.lp_candidates not in (None, "image", "all"):
            raise InputError(f"lp_candidates must be 'image', 'all' or None, got {self.lp_candidates!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["k_rounds"] = list(self.k_rounds) if self.k_rounds else None
        for key in ("lp_alpha_bg_rounds", "lp_fg_rounds", "probe_rounds"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GLCCConfig:
        d = dict(d)
        d["probe"] = ProbeConfig(**d.get("probe", {}))
        d["combine"] = CombineConfig(**d["combine"]) if d.get("combine") else None
        d["k_rounds"] = tuple(d["k_rounds"]) if d.get("k_rounds") else None
        for key in ("lp_alpha_bg_rounds", "lp_fg_rounds", "probe_rounds"):
            d[key] = tuple(d[key]) if d.get(key) is not None else None
        return cls(**d)

    def probe_for_round(self, r: int) -> ProbeConfig:
        """The probe settings of bootstrap round ``r`` (0-based)."""
        if self.probe_rounds is None:
            return self.probe
        if r >= len(self.probe_rounds):
            raise InputError(f"probe_rounds has {len(self.probe_rounds)} entries, round {r + 1} needs one")
        return self.probe_rounds[r]

    def lp_alpha_for_round(self, r: int) -> float:
        """bg exponent of the LP re-scoring of round ``r``."""
        if self.lp_alpha_bg_rounds is None:
            return self.lp_alpha_bg
        if r >= len(self.lp_alpha_bg_rounds):
            raise InputError(f"lp_alpha_bg_rounds has {len(self.lp_alpha_bg_rounds)} entries, round {r + 1} needs one")
        return self.lp_alpha_bg_rounds[r]

    def lp_fg_for_round(self, r: int, kind: str) -> FgMethod:
        """fg transform of the LP re-scoring of round ``r`` for supervision ``kind`` (docs/reference-code.md §5)."""
        if self.lp_fg_rounds is not None:
            if r >= len(self.lp_fg_rounds):
                raise InputError(f"lp_fg_rounds has {len(self.lp_fg_rounds)} entries, round {r + 1} needs one")
            return self.lp_fg_rounds[r]
        if kind == "semi":  # configs/lp/semi.py, obj,semi.py: no per-image min-max
            return FgMethod(softmax=None, norm=False, L1=True)
        return FgMethod(softmax=None, norm=True, bypath_suppress=False, L1=True)

    def lp_candidates_for(self, kind: str) -> str:
        """"all" (val mode) or "image" (the image's classes) for the LP re-scoring of ``kind``."""
        return self.lp_candidates or ("all" if kind == "semi" else "image")


class GLCC:
    """Global-local consistent classifier over mask embeddings.

    After :meth:`fit` (or :meth:`load`): ``X_`` (N, D) float32 L2-normalised training embeddings,
    ``degree_`` (N,), ``pstar_`` (N, K) float32, ``probe_`` :class:`LinearProbe`, ``k_graph_`` (k of the
    graph the degrees come from), ``kind_``, ``has_bg_``, ``class_names``.
    """

    def __init__(self, config: GLCCConfig | None = None, class_names: list[str] | None = None) -> None:
        self.config = config or GLCCConfig()
        self.class_names = list(class_names) if class_names is not None else None
        self.X_: np.ndarray | None = None
        self.degree_: np.ndarray | None = None
        self.pstar_: np.ndarray | None = None
        self.probe_: LinearProbe | None = None
        self.k_graph_: int = self.config.k
        self.kind_: str | None = None
        self.has_bg_: bool = True
        self.history_: list[dict] = []
        self._index = None
        # embedder identity + mask configuration the embeddings came from (tusss.classify.check_provenance):
        # clip_model, clip_weights, clip_preset, clip_config, mask_config_hash; saved in glcc.json
        self.provenance: dict | None = None

    # ------------------------------------------------------------------ construction
    def _build_supervision(self, supervision, offsets, N, kw) -> Supervision:
        if isinstance(supervision, Supervision):
            if kw:
                raise InputError(f"keyword(s) {sorted(kw)} are not used with a prepared Supervision")
            sup = supervision
            if sup.Pc.shape[0] != N or int(sup.offsets[-1]) != N:
                raise InputError(f"supervision covers {sup.Pc.shape[0]} masks, embeddings {N}")
            return sup
        if isinstance(supervision, str):
            if supervision == "weak" and "has_bg" in kw:  # weak always derives a background class
                if not kw.pop("has_bg"):
                    raise InputError("weak supervision derives a background score; has_bg must be True")
            spec = make_supervision_spec(supervision, kw)
        elif isinstance(supervision, (FullSupervision, SemiSupervision, WeakSupervision)):
            if kw:
                raise InputError(f"keyword(s) {sorted(kw)} are not used with a {type(supervision).__name__} "
                                 "object: set them on the object")
            spec = supervision
        else:
            raise InputError("supervision must be 'full', 'semi', 'weak', a FullSupervision / SemiSupervision / "
                             f"WeakSupervision or a Supervision, got {supervision!r}")
        K = len(self.class_names) if self.class_names else None
        return spec.build(offsets, K)

    def _rescore(self, table: np.ndarray, sup: Supervision, fg: FgMethod, alpha: float,
                 candidates: str = "image") -> np.ndarray:
        """Re-score a (N, K) table image by image (docs/reference-code.md §5) over the images' class sets
        (``candidates="image"``, train mode) or over all classes (``"all"``, val mode); rows of labelled
        masks are then overwritten by their GT fractions."""
        bg = BgMethod("alpha_bg", alpha=alpha) if sup.has_bg else BgMethod("no_bg")
        K = sup.num_classes
        n_fg = K - 1 if sup.has_bg else K
        if candidates == "all":
            sets = [np.arange(n_fg)] * (len(sup.offsets) - 1)
        else:
            sets = [np.arange(n_fg) if s is None else s for s in sup.class_sets]
        out = seed_table(table, sup.offsets, sets, K, fg_method=fg, bg_method=bg, with_bg_logit=sup.has_bg).scores
        if sup.gt is not None and sup.labeled.any():
            out[sup.labeled] = sup.gt[sup.labeled]
        return out

    def _probe_targets(self, Y: np.ndarray, sup: Supervision) -> np.ndarray:
        t = prob2soft_label(Y, sup.cls_lb(), self.config.soft_gamma)
        if sup.gt is not None and sup.labeled.any():
            t[sup.labeled] = sup.gt[sup.labeled]
        return t

    def fit(
        self,
        embeddings: np.ndarray,
        areas: np.ndarray | None,
        image_ids: np.ndarray,
        supervision: str | SupervisionSpec | Supervision = "full",
        *,
        progress: bool = False,
        **kw: object,
    ) -> GLCC:
        """Construct the classifier.

        Args:
            embeddings: (N, D) float training mask embeddings, grouped by image.
            areas: (N,) mask areas (probe loss weights), or None.
            image_ids: (N,) image id of each mask (each image's masks contiguous).
            supervision: a typed :class:`tusss.supervision.FullSupervision` / ``SemiSupervision`` /
                ``WeakSupervision`` (preferred), a prepared :class:`tusss.supervision.Supervision`, or the kind
                as a string with the spec's fields as keywords: "full" (``gt_fractions`` (N, K)), "semi"
                (``gt_fractions``, ``labeled_images`` (I,) bool, optional ``zero_shot_scores`` (N, K),
                ``balance``, ``balance_semi``), "weak" (``zero_shot_logits`` (N, C), ``image_labels`` per
                image, ``num_classes``, optional ``fg_method`` / ``bg_method`` / ``variant``). ``has_bg``
                (default True) says class 0 is background. A keyword the kind does not take (e.g. a
                misspelling) raises :class:`InputError`.

        Returns:
            self.
        """
        cfg = self.config
        X = l2_normalize(embeddings)
        N = X.shape[0]
        if N < 2:
            raise InputError(f"GLCC needs at least 2 training embeddings, got {N}")
        offsets = group_offsets(image_ids)
        if int(offsets[-1]) != N:
            raise InputError(f"image_ids has {int(offsets[-1])} entries, embeddings {N}")
        if areas is not None:
            areas = np.asarray(areas, dtype=np.float64)
            if areas.shape != (N,):
                raise InputError(f"areas must be ({N},), got {areas.shape}")
            check_finite(areas, "areas")
        sup = self._build_supervision(supervision, offsets, N, dict(kw))
        if sup.Pc.shape[0] != N or (sup.gt is not None and sup.gt.shape[0] != N):
            raise InputError(f"the supervision tables have {sup.Pc.shape[0]} rows but there are N = {N} embeddings")
        if self.class_names is not None and len(self.class_names) != sup.num_classes:
            raise InputError(f"{len(self.class_names)} class names but the supervision has K = {sup.num_classes}")
        kind = sup.kind
        rounds = cfg.rounds if cfg.rounds is not None else {"full": 1, "semi": 1, "weak": 2}[kind]
        k_rounds = tuple(cfg.k_rounds) if cfg.k_rounds else (cfg.k,) * rounds
        if len(k_rounds) < rounds:
            raise InputError(f"k_rounds {k_rounds} shorter than rounds = {rounds}")
        graphs: dict[int, KnnGraph] = {}
        self.history_ = []

        def graph(k: int) -> KnnGraph:
            if k not in graphs:
                t0 = time.perf_counter()
                graphs[k] = build_graph(X, k=k, gamma=cfg.gamma, backend=cfg.knn_backend, normalized=True,
                                        recall_sample=1000)
                self.history_.append({"step": f"knn k={k}", "seconds": time.perf_counter() - t0,
                                      "backend": cfg.knn_backend, "recall_sample": graphs[k].recall})
            return graphs[k]

        def lp(Pc: np.ndarray, k: int, r: int) -> np.ndarray:
            g = graph(k)
            t0 = time.perf_counter()
            P, info = propagate(g, Pc, cfg.alpha, tol=cfg.cg_tol, maxiter=cfg.cg_maxiter, backend=cfg.cg_backend)
            self.history_.append({"step": f"lp k={k}", "seconds": time.perf_counter() - t0,
                                  "cg_iterations": int(info.iterations.max(initial=0)),
                                  "converged": bool(info.converged.all())})
            # docs/reference-code.md §5 "Transductive LP outputs": the rule depends on the supervision and the round
            return self._rescore(P, sup, cfg.lp_fg_for_round(r, kind), cfg.lp_alpha_for_round(r),
                                 cfg.lp_candidates_for(kind))

        def probe(Y: np.ndarray, r: int) -> LinearProbe:
            t0 = time.perf_counter()
            pcfg = cfg.probe_for_round(r)
            p = train_probe(X, Y, areas, pcfg, progress=progress, labeled=sup.labeled, normalized=True)  # X: unit rows
            self.history_.append({"step": "probe", "seconds": time.perf_counter() - t0, "iters": pcfg.iters,
                                  "warmup_iters": pcfg.warmup_iters, "sampler": pcfg.sampler})
            return p

        def probe_train_scores(p: LinearProbe) -> np.ndarray:
            # reference: probe on the training set: softmax over {bg} ∪ image classes (bypath False), norm, bg^α
            return self._rescore(p.logits(X), sup, FgMethod(softmax=1.0, norm=True, bypath_suppress=False),
                                 cfg.probe_alpha_bg)

        if kind == "full":
            pr = probe(sup.Pc, 0)  # reference: the GT fractions are the probe's soft labels as they are
            Ystar, k_last = sup.gt, cfg.k
            graph(k_last)
        elif cfg.order == "lp_first":
            Pc = sup.Pc
            for r in range(rounds):
                Ystar = lp(Pc, k_rounds[r], r)
                pr = probe(self._probe_targets(Ystar, sup), r)
                if r < rounds - 1:
                    Pc = probe_train_scores(pr)
            k_last = k_rounds[rounds - 1]
        elif cfg.order == "probe_first":
            targets = self._probe_targets(sup.Pc, sup)
            for r in range(rounds):
                pr0 = probe(targets, r)
                Ystar = lp(probe_train_scores(pr0), k_rounds[r], r)
                targets = self._probe_targets(Ystar, sup)
            pr = pr0
            k_last = k_rounds[rounds - 1]
        else:
            raise InputError(f"order must be 'lp_first' or 'probe_first', got {cfg.order!r}")

        self.X_ = X
        self.degree_ = graphs[k_last].degree
        self.pstar_ = np.asarray(Ystar, dtype=np.float32)
        self.probe_ = pr
        self.k_graph_ = k_last
        self.kind_ = kind
        self.has_bg_ = sup.has_bg
        self._index = None
        return self

    # ------------------------------------------------------------------ inference
    @property
    def num_classes(self) -> int:
        self._check_fitted()
        return int(self.pstar_.shape[1])

    def _check_fitted(self) -> None:
        if self.X_ is None or self.probe_ is None:
            raise InputError("GLCC is not fitted: call fit() or GLCC.load()")

    @property
    def combine_config(self) -> CombineConfig:
        return self.config.combine or default_combine(self.kind_ or "full")

    def predict_parts(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, D) -> probe scores softmax(100·cos) (M, K) and inductive bias āᵀP* (M, K), float32."""
        self._check_fitted()
        E = np.asarray(embeddings)
        if E.ndim != 2 or E.shape[1] != self.X_.shape[1]:
            raise InputError(f"embeddings must be (M, {self.X_.shape[1]}), got {E.shape}")
        Q = l2_normalize(E) if E.shape[0] else E.astype(np.float32)
        s_probe = self.probe_.scores(Q) if Q.shape[0] else np.zeros((0, self.num_classes), np.float32)
        k_bar = self.config.k_bar or self.k_graph_
        bias = inductive_bias(Q, self.X_, self.degree_, self.pstar_, k_bar, self.k_graph_, norm=self.config.a_norm,
                              index=self.knn_index())
        return s_probe, bias

    _index_lock = threading.Lock()  # guards the creation of ``_index`` (the KnnIndex has its own build lock)

    def knn_index(self, device: str | None = None) -> KnnIndex:
        """The warm :class:`tusss.glcc.inductive.KnnIndex` over the training embeddings: created on first use
        (thread-safe), built once, reused by every :meth:`predict` until the next fit / load.
        ``device`` (torch backend) only applies when the index does not exist yet."""
        self._check_fitted()
        if self._index is None or self._index.base is not self.X_:
            with GLCC._index_lock:
                if self._index is None or self._index.base is not self.X_:
                    self._index = KnnIndex(self.X_, self.config.knn_backend, device=device)
        return self._index

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """(M, D) float mask embeddings -> (M, K) float32 GLCC scores (argmax = dataset class id)."""
        s_probe, bias = self.predict_parts(embeddings)
        return combine_scores(s_probe, bias, self.combine_config, has_bg=self.has_bg_)

    def predict_batch(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        """Batched inference: a list of (M_i, D) embeddings (e.g. one per image) -> list of (M_i, K) float32
        scores, computed as one (sum M_i, D) call (one probe matmul, one kNN search)."""
        if not batch:
            return []
        sizes = [int(np.asarray(e).shape[0]) for e in batch]
        out = self.predict(np.concatenate([np.asarray(e) for e in batch]))
        return np.split(out, np.cumsum(sizes)[:-1])

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, embeddings_dtype: str = "float32") -> None:
        """Write the classifier to the directory ``path``, atomically (:mod:`tusss.persist`).

        The files are written into a hidden temporary folder beside ``path`` that is renamed over it at the end,
        so a save killed or out of disk space half-way leaves the previous model (or nothing) at ``path``. A
        ``path`` that holds other files than a GLCC model's is not replaced as a whole: the files are then
        replaced one by one, ``glcc.json`` last (removed first), so an interrupted save leaves a directory
        that :meth:`load` refuses."""
        self._check_fitted()
        d = Path(path)
        arrays = {
            "train_embeddings.npy": self.X_.astype(embeddings_dtype),
            "degree.npy": np.asarray(self.degree_, np.float64),
            "pstar.npy": self.pstar_.astype(np.float32),
            "probe_weight.npy": self.probe_.weight.numpy().astype(np.float32),
        }
        meta = {
            "format": "tusss-glcc", "format_version": FORMAT_VERSION, "config": self.config.to_dict(),
            "class_names": self.class_names, "kind": self.kind_, "has_bg": self.has_bg_, "k_graph": self.k_graph_,
            "probe_scale": self.probe_.scale, "N": int(self.X_.shape[0]), "D": int(self.X_.shape[1]),
            "K": int(self.pstar_.shape[1]), "history": self.history_, "provenance": self.provenance,
        }
        meta_text = json.dumps(meta, indent=1)

        def write_into(folder: Path) -> None:
            fault_point("glcc-save")  # test hook (TUSSS_FAULT_KILL_AFTER): killed before / between files
            for name, arr in arrays.items():
                atomic_save_npy(folder / name, arr)
                fault_point("glcc-save")
            atomic_write_text(folder / "glcc.json", meta_text)

        own = {*_FILES, "glcc.json"}
        if not d.exists() or (d.is_dir() and all(q.name in own for q in d.iterdir())):
            with atomic_directory(d) as tmp:
                write_into(tmp)
            return
        d.mkdir(parents=True, exist_ok=True)  # a folder shared with other files: marker-last in place
        meta_path = d / "glcc.json"
        if meta_path.exists():
            meta_path.unlink()
        write_into(d)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = False) -> GLCC:
        """Read a classifier written by :meth:`save`. Raises CorruptFileError (naming the file, what is wrong and
        the fix) for a missing / incomplete / truncated / corrupt directory, another format version, arrays of
        the wrong shape or dtype, or NaN/inf values."""
        d = Path(path)
        meta_path = d / "glcc.json"
        fix = "re-run `tusss fit` to rewrite the model"
        if not d.is_dir():
            raise CorruptFileError(f"GLCC directory {d} does not exist; run `tusss fit` to create it")
        if not meta_path.is_file():
            raise corrupt(d, "is not a complete GLCC directory: glcc.json missing (interrupted save?)", fix)
        meta = read_json(meta_path, what="GLCC metadata", fix=fix)
        if not isinstance(meta, dict) or meta.get("format") != "tusss-glcc":
            raise corrupt(meta_path, "is not a tusss GLCC file", fix)
        if meta.get("format_version") != FORMAT_VERSION:
            raise corrupt(meta_path, f"has format_version {meta.get('format_version')!r}; this tusss reads "
                          f"version {FORMAT_VERSION}", fix)
        try:
            N, D, K = int(meta["N"]), int(meta["D"]), int(meta["K"])
            cfg = GLCCConfig.from_dict(meta["config"])
            k_graph = int(meta["k_graph"])
        except (KeyError, TypeError, ValueError) as e:
            raise corrupt(meta_path, f"lacks or garbles a field: {type(e).__name__}: {e}", fix) from e
        specs = {"train_embeddings.npy": ((N, D), ("float32", "float16", "float64")),
                 "degree.npy": ((N,), ("float64", "float32")), "pstar.npy": ((N, K), ("float32", "float64")),
                 "probe_weight.npy": ((K, D), ("float32", "float64"))}
        arrs = {}
        for name in _FILES:
            shp, dts = specs[name]
            arrs[name] = load_npy(d / name, what=f"GLCC array {name}", shape=shp, dtype=dts, fix=fix,
                                  mmap=mmap and name == "train_embeddings.npy", finite=True)
        m = cls(cfg, meta.get("class_names"))
        X = arrs["train_embeddings.npy"]
        m.X_ = X if (mmap and X.dtype == np.float32) else np.ascontiguousarray(X, dtype=np.float32)
        m.degree_ = arrs["degree.npy"]
        m.pstar_ = arrs["pstar.npy"].astype(np.float32)
        m.probe_ = LinearProbe(arrs["probe_weight.npy"], scale=float(meta.get("probe_scale", 100.0)))
        m.k_graph_ = k_graph
        m.kind_ = meta.get("kind")
        m.has_bg_ = bool(meta.get("has_bg", True))
        m.history_ = meta.get("history", [])
        m.provenance = meta.get("provenance") if isinstance(meta.get("provenance"), dict) else None
        return m

