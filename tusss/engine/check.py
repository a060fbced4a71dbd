"""``tusss-engine check``: run every graph of an engine and the PyTorch model on the same inputs.

References are the *original* PyTorch code paths, not the export wrappers: ``sam.image_encoder``,
``sam.prompt_encoder`` + ``sam.mask_decoder`` (multimask), tusss' ``TowerRunner.features`` (DBA-CLIP, with
its own attention bias) and open_clip's ``encode_text``.

Per output: max abs error, relative error (max abs error / max |reference|), cosine (flattened; and the
minimum per-row cosine for embeddings), mask IoU for the decoder's masks (logit > 0). Pass rules:

* fp32: relative error <= 1e-4 for every output;
* fp16 (and bf16, inductor builds): cosine >= 0.999 for embeddings / features / IoU predictions, mean mask
  IoU >= 0.98;
* int8: reported; fails below cosine 0.99.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

FP32_REL = 1e-4
FP16_COS = 0.999
FP16_MASK_IOU = 0.98
INT8_COS = 0.99


@dataclass
class OutputCheck:
    graph: str
    output: str
    case: str
    max_abs: float
    rel: float
    cosine: float
    min_row_cosine: float
    mask_iou: float | None = None
    ok: bool = True
    rule: str = ""


@dataclass
class CheckReport:
    precision: str
    rows: list[OutputCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def table(self) -> str:
        head = f"{'graph':<13} {'output':<17} {'case':<14} {'max_abs':>9} {'rel':>9} {'cosine':>9} " \
               f"{'min_row_cos':>11} {'mask_iou':>8}  status"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            iou = f"{r.mask_iou:.4f}" if r.mask_iou is not None else ""
            lines.append(f"{r.graph:<13} {r.output:<17} {r.case:<14} {r.max_abs:9.2e} {r.rel:9.2e} "
                         f"{r.cosine:9.6f} {r.min_row_cosine:11.6f} {iou:>8}  {'ok' if r.ok else 'FAIL'} ({r.rule})")
        return "\n".join(lines)


def compare(ref: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    """max_abs, rel, cosine (flattened) and min per-row cosine (rows = leading axis) of ``got`` vs ``ref``."""
    r = ref.detach().double().cpu().reshape(ref.shape[0], -1)  # float64: cosines of long vectors
    g = got.detach().double().cpu().reshape(got.shape[0], -1)
    if r.shape != g.shape:
        raise ValueError(f"shape mismatch: reference {tuple(ref.shape)}, engine {tuple(got.shape)}")
    err = (r - g).abs().max().item() if r.numel() else 0.0
    scale = r.abs().max().item() if r.numel() else 0.0
    cos = torch.nn.functional.cosine_similarity(r.reshape(1, -1), g.reshape(1, -1), eps=1e-12).item()
    rows = torch.nn.functional.cosine_similarity(r, g, dim=1, eps=1e-12)
    return {"max_abs": err, "rel": err / max(scale, 1e-12), "cosine": cos, "min_row_cosine": rows.min().item()}


def mask_iou(ref_logits: torch.Tensor, got_logits: torch.Tensor) -> float:
    """Mean IoU of the binary masks (logit > 0) over all masks; two empty masks count as IoU 1."""
    a = (ref_logits > 0).reshape(-1, ref_logits.shape[-2] * ref_logits.shape[-1])
    b = (got_logits > 0).reshape(-1, got_logits.shape[-2] * got_logits.shape[-1])
    inter = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return float(iou.mean())


def _judge(row: OutputCheck, precision: str, kind: str) -> None:
    if precision == "fp32":
        row.ok, row.rule = row.rel <= FP32_REL, f"rel <= {FP32_REL:g}"
    elif precision in ("fp16", "bf16"):  # bf16: inductor builds, judged by the fp16 rules
        if kind == "mask":
            row.ok, row.rule = (row.mask_iou or 0) >= FP16_MASK_IOU, f"mask IoU >= {FP16_MASK_IOU}"
        else:
            row.ok, row.rule = row.cosine >= FP16_COS, f"cosine >= {FP16_COS}"
    else:
        row.ok, row.rule = row.cosine >= INT8_COS, f"cosine >= {INT8_COS} (int8: report)"


def sam_inputs(sam: Any, n: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, S, S) pre-processed SAM inputs of synthetic images (SAM's own resize + normalise + pad)."""
    from segment_anything.utils.transforms import ResizeLongestSide

    from .bench import synthetic_images

    S = int(sam.image_encoder.img_size)
    tr = ResizeLongestSide(S)
    xs = []
    for img in synthetic_images(n, (3 * S // 8 * 2, S), seed):
        t = torch.as_tensor(tr.apply_image(img)).permute(2, 0, 1)[None].float()
        xs.append(sam.preprocess(t))
    return torch.cat(xs, 0)


@torch.no_grad()
def check_engine(
    engine: Any,
    sam: Any = None,
    dbaclip: Any = None,
    *,
    prompt_batches: tuple[int, ...] = (1, 7, 64),
    window_counts: tuple[int, ...] = (1, 5),
    encoder_batch: int | None = None,
    seed: int = 0,
    log=print,
) -> CheckReport:
    """Compare every graph of ``engine`` with the PyTorch models (``sam``: segment_anything Sam,
    ``dbaclip``: tusss DBAClip). Graphs whose model is not given are skipped."""
    prec = engine.manifest.precision
    rep = CheckReport(prec)
    g = torch.Generator().manual_seed(seed)

    def add(graph: str, out: str, case: str, ref: torch.Tensor, got: torch.Tensor, kind: str = "emb") -> None:
        row = OutputCheck(graph, out, case, **compare(ref, got))
        if kind == "mask":
            row.mask_iou = mask_iou(ref, got)
        _judge(row, prec, kind)
        rep.rows.append(row)
        log(f"[check] {graph}.{out} [{case}]: max_abs {row.max_abs:.2e} rel {row.rel:.2e} cos {row.cosine:.6f}"
            + (f" mask IoU {row.mask_iou:.4f}" if row.mask_iou is not None else "") + (" ok" if row.ok else " FAIL"))

    if sam is not None and "sam_encoder" in engine.graphs:
        n = encoder_batch or (2 if sam.image_encoder.img_size < 1024 else 1)
        x = sam_inputs(sam, n, seed)
        ref = sam.image_encoder(x)
        got = engine.encode_images(x)
        add("sam_encoder", "image_embeddings", f"N={n}", ref, got)
        emb = ref[:1]
    elif sam is not None:
        emb = torch.randn(1, sam.prompt_encoder.embed_dim, *sam.prompt_encoder.image_embedding_size, generator=g)
    if sam is not None and "sam_decoder" in engine.graphs:
        S = int(sam.image_encoder.img_size)
        pe = sam.prompt_encoder.get_dense_pe()
        for B in prompt_batches:
            pts = torch.rand(B, 1, 2, generator=g) * S
            lab = torch.ones(B, 1)
            sp, de = sam.prompt_encoder(points=(pts, lab), boxes=None, masks=None)
            ref_m, ref_i = sam.mask_decoder(emb, pe, sp, de, multimask_output=True)
            got_m, got_i = engine.decode_prompts(emb, pts, lab)
            add("sam_decoder", "low_res_masks", f"B={B}", ref_m, got_m, "mask")
            add("sam_decoder", "iou_predictions", f"B={B}", ref_i, got_i)
    if dbaclip is not None and "clip_windows" in engine.graphs:
        from tusss.clip.attention import build_attention_bias

        runner = dbaclip.runner
        cfg = dbaclip.cfg
        patch = runner.patch
        base = runner.base_grid[0] * patch
        cases = [(n, base, base) for n in window_counts] + [(1, 2 * base, 2 * base + 3 * patch)]
        for n, H, W in cases:
            h, w = H // patch, W // patch
            px = torch.randn(n, 3, H, W, generator=g)
            tm = torch.rand(n, 6, h * w, generator=g) > 0.7
            ref = runner.features(px, tm)  # (n, h, w, D), tusss' own DBA-CLIP code
            bias = build_attention_bias(tm, bias_value=cfg.bias_value, cls_visible=cfg.cls_visible,
                                        force_diagonal=cfg.force_diagonal)
            got = engine.clip_windows(px, runner.pos_embed((h, w)), bias).reshape(ref.shape)
            add("clip_windows", "features", f"N={n} {H}x{W}", ref.reshape(n * h * w, -1),
                got.reshape(n * h * w, -1))
    if dbaclip is not None and "clip_text" in engine.graphs:
        from .runtime import eot_positions

        names = ["background", "aeroplane", "person with clothes,people,human", "tvmonitor screen", "cat"]
        tok = dbaclip.tokenizer([f"a photo of a {n}." for n in names])
        ref = dbaclip.model.encode_text(tok)
        got = engine.text_features(tok, eot_positions(dbaclip.model, tok))
        add("clip_text", "text_features", f"K={len(names)}", ref, got)
    return rep


def models_from_manifest(manifest: Any, weights: str | None = None) -> tuple[Any, Any]:
    """Rebuild (MaskGenerator or None, DBAClip or None) as the manifest describes (same seed / sources)."""
    from .models import load_models

    sam_m, clip_m = manifest.sam, manifest.clip
    sam_src = sam_m.get("weights", "random") if sam_m else "random"
    clip_src = clip_m.get("weights", "random") if clip_m else "random"
    w = weights or f"sam={sam_src},clip={clip_src}"
    seed = int((sam_m or clip_m).get("seed", 0))
    models = load_models(sam_m.get("model_type") if sam_m else None, clip_m.get("model") if clip_m else None, w,
                         clip_preset=clip_m.get("preset", "reference") if clip_m else "reference",
                         mask_preset=sam_m.get("mask_preset", "tuss") if sam_m else "tuss", seed=seed)
    return models.mask_generator, models.dbaclip
