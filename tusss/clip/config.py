"""DBA-CLIP configuration: every constant of docs/reference-code.md §2-3 as an overridable field, plus named presets.

Presets (``DBAClipConfig.preset(name, **overrides)``):

- ``"reference"`` (default): what the authors' code computes (docs/reference-code.md §2-3, §10): one joint
  attention bias for all masks of a window (tokens sharing >= 1 mask: 0, otherwise -4; diagonal not forced;
  CLS row/column 0), token membership by PyTorch ``nearest`` downsampling of the float mask, scale 1/sqrt(head_dim),
  A = S_q + S_k (sum), residual weight 1, FFN kept, GSW with short side 448, 224 windows at stride 56,
  global pass on the resized image, fusion 0.5 / 0.5, bilinear up-sampling to the original size and a mean
  over the hard mask pixels.
- ``"paper"``: the paper's text (Eq. 9-10, §5.2): a per-mask hard bias B = m m^T v I with a large constant
  (c = 100), one last-block pass per mask, A = 1/2 (S_q + S_k), windows at stride 112.
- ``"maskclip"``: Eq. 5 baseline (reference "NoAttCLIPLayers"): the last block's attention is the identity
  on v (patch tokens keep their own value), residual and FFN kept, no bias.
- ``"sclip"``: q-q + k-k attention (sum) without any bias (reference "SCLIPLayers" without bias).
- ``"plain"``: the unmodified CLIP last block (q-k softmax attention), no bias: open_clip's own image tower.
- ``"cityscapes"``: docs/reference-code.md §3 Cityscapes scheme: short side 512, windows 448 and 224 at stride
  window // 2, no global pass, the two window sizes averaged, CLS not visible to patch tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tusss.errors import InputError

ATTENTIONS = ("dual", "identity", "qk")
BIASES = ("joint", "per_mask", "none")
MODES = ("sum", "mean")


@dataclass(frozen=True)
class DBAClipConfig:
    """All constants of DBA-CLIP + GSW (docs/reference-code.md §2-3). Defaults = preset ``"reference"``.

    Attributes:
        attention: last-block attention: ``"dual"`` = S_q + S_k (q-q and k-k softmax, SCLIP/DBA),
            ``"identity"`` = attention replaced by the identity on v (MaskCLIP, Eq. 5), ``"qk"`` = the
            unmodified CLIP softmax(q k^T) attention.
        attention_mode: ``"sum"`` (A = S_q + S_k, reference) or ``"mean"`` (A = 1/2 (S_q + S_k), paper Eq. 9).
        scale: logit scale of the attention; ``None`` = head_dim ** -0.5 (reference: 1/8 for
        ViT-B/16).
        bias: ``"joint"`` = one bias from all masks (docs/reference-code.md §2), ``"per_mask"`` = one last-block
            pass per mask with the bias of that mask only (paper Eq. 9), ``"none"`` = no attention bias.
        bias_value: additive logit bias between tokens that share no mask (reference: -4; paper: "-c").
        force_diagonal: allow every token to attend itself (paper's B = m m^T v I); reference: False.
        cls_visible: patch tokens may attend the CLS token with bias 0 (VOC/COCO True, Cityscapes False).
        token_downsample: how a mask becomes token membership: PyTorch interpolation mode of the float mask
            to the token grid (``"nearest"`` in the reference, ``"nearest-exact"`` allowed).
        residual_weight: weight of the residual x in x1 = rw * x + aw * W_o(A v) (reference 1; "no residual" 0).
        attention_weight: weight aw of the attention branch (reference 1; "no residual" ablation 2).
        keep_ffn: keep the last block's MLP branch (reference True).
        target_size: short side of the resized image (reference 448); ``None`` keeps the original scale.
        size_divisor: the resized sides are rounded up to a multiple of this (16 = patch size).
        window_sizes: sliding-window sizes (reference (224,); Cityscapes (448, 224)).
        stride_divisor: window stride = window // stride_divisor (reference 4 -> 56; paper 2 -> 112).
        global_weight: weight of the global pass in F = g * global + (1 - g) * local (reference 0.5);
            0 = windows only, 1 = global pass only (no windows).
        mask_resize: interpolation of the masks to the resized image for the windows (``"nearest-exact"``).
        window_antialias: antialias flag of the bilinear up-sampling of each window output to its size.
        pos_embed_interpolation: interpolation of the positional-embedding grid for non-224 inputs.
        logit_scale: multiplier of the cosine similarity in :meth:`DBAClip.logits` (OpenAI CLIP: 100).
        image_mean / image_std: CLIP normalisation (open_clip's OpenAI values).
        max_batch_tokens: soft cap on (sequences x tokens) per forward chunk (memory bound only; results
            do not depend on it).
    """

    attention: str = "dual"
    attention_mode: str = "sum"
    scale: float | None = None
    bias: str = "joint"
    bias_value: float = -4.0
    force_diagonal: bool = False
    cls_visible: bool = True
    token_downsample: str = "nearest"
    residual_weight: float = 1.0
    attention_weight: float = 1.0
    keep_ffn: bool = True
    target_size: int | None = 448
    size_divisor: int = 16
    window_sizes: tuple[int, ...] = (224,)
    stride_divisor: int = 4
    global_weight: float = 0.5
    mask_resize: str = "nearest-exact"
    window_antialias: bool = True
    pos_embed_interpolation: str = "bicubic"
    logit_scale: float = 100.0
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    max_batch_tokens: int = 64 * 197
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.window_sizes, int):
            object.__setattr__(self, "window_sizes", (self.window_sizes,))
        else:
            object.__setattr__(self, "window_sizes", tuple(int(w) for w in self.window_sizes))
        checks = [
            (self.attention in ATTENTIONS, f"attention must be one of {ATTENTIONS}, got {self.attention!r}"),
            (self.attention_mode in MODES, f"attention_mode must be one of {MODES}, got {self.attention_mode!r}"),
            (self.bias in BIASES, f"bias must be one of {BIASES}, got {self.bias!r}"),
            (self.token_downsample in ("nearest", "nearest-exact"),
             f"token_downsample must be 'nearest' or 'nearest-exact', got {self.token_downsample!r}"),
            (self.mask_resize in ("nearest", "nearest-exact"),
             f"mask_resize must be 'nearest' or 'nearest-exact', got {self.mask_resize!r}"),
            (self.target_size is None or int(self.target_size) >= 16,
             f"target_size must be None or >= 16, got {self.target_size!r}"),
            (self.size_divisor >= 1, f"size_divisor must be >= 1, got {self.size_divisor!r}"),
            (len(self.window_sizes) > 0 and all(w >= 16 for w in self.window_sizes),
             f"window_sizes must be a non-empty tuple of sizes >= 16, got {self.window_sizes!r}"),
            (self.stride_divisor >= 1, f"stride_divisor must be >= 1, got {self.stride_divisor!r}"),
            (0.0 <= self.global_weight <= 1.0, f"global_weight must be in [0, 1], got {self.global_weight!r}"),
            (self.scale is None or self.scale > 0, f"scale must be None or > 0, got {self.scale!r}"),
            (self.max_batch_tokens >= 1, "max_batch_tokens must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(f"DBAClipConfig: {msg}")

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str = "reference", **overrides: object) -> DBAClipConfig:
        """Return the named preset with ``overrides`` applied (unknown name or field -> InputError)."""
        if name not in PRESETS:
            raise InputError(f"unknown DBA-CLIP preset {name!r}; known presets: {sorted(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(overrides) - fields)
        if bad:
            raise InputError(f"unknown DBAClipConfig field(s) {bad}; known fields: {sorted(fields)}")
        kw = dict(PRESETS[name])
        kw.update(overrides)
        kw.setdefault("name", name)
        return cls(**kw)  # type: ignore[arg-type]

    def replace(self, **overrides: object) -> DBAClipConfig:
        """Copy with some fields changed (unknown field -> InputError)."""
        fields = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(overrides) - fields)
        if bad:
            raise InputError(f"unknown DBAClipConfig field(s) {bad}; known fields: {sorted(fields)}")
        return dataclasses.replace(self, **overrides)  # type: ignore[arg-type]

    def window_strides(self) -> tuple[int, ...]:
        """Stride of each window size (window // stride_divisor, reference: 224 // 4 = 56)."""
        return tuple(max(1, w // self.stride_divisor) for w in self.window_sizes)


PRESETS: dict[str, dict[str, object]] = {
    "reference": {},
    "paper": {
        "bias": "per_mask",
        "bias_value": -100.0,
        "force_diagonal": True,
        "attention_mode": "mean",
        "stride_divisor": 2,
    },
    "maskclip": {"attention": "identity", "bias": "none"},
    "sclip": {"attention": "dual", "bias": "none"},
    "plain": {"attention": "qk", "bias": "none"},
    "cityscapes": {
        "target_size": 512,
        "window_sizes": (448, 224),
        "stride_divisor": 2,
        "global_weight": 0.0,
        "cls_visible": False,
    },
}


def preset_names() -> list[str]:
    """Names accepted by :meth:`DBAClipConfig.preset`."""
    return sorted(PRESETS)
