"""Export-friendly views of a segment_anything ``Sam``: the image encoder and the prompt decoder.

Both wrappers hold references to the original sub-modules (no copy, no mutation) and compute exactly
what segment_anything computes, written so that the graph is clean for ONNX Runtime and TensorRT:

* ``SamEncoderGraph``: (B, 3, 1024, 1024) float32 pre-processed pixels (SAM's ``preprocess``: normalised
  and zero-padded) -> (B, 256, 64, 64) image embeddings. The neck's ``LayerNorm2d`` is written as a
  channels-last ``layer_norm`` so that it exports as one ``LayerNormalization`` node (same maths, same
  eps), which the fp16 pass keeps in fp32 and TensorRT maps to its normalisation layer.
* ``SamDecoderGraph``: one image embedding (1, 256, 64, 64) shared by a **prompt batch** of B prompts of
  N points each ((B, N, 2) coordinates in the 1024-frame, (B, N) labels) -> low-res masks
  (B, 3, 256, 256) logits and IoU predictions (B, 3) (SAM's ``multimask_output=True``). The prompt
  encoder is re-expressed with ``where``/broadcast instead of boolean index assignment; the image
  embedding is not repeated per prompt: the image-side projections of the first two-way layer are computed
  once and broadcast (the per-prompt image tokens only exist after that layer's image->token update);
  upsampling, thresholds, NMS and the rest of automatic mask generation stay in the runtime.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _is_layernorm2d(m: nn.Module) -> bool:
    return type(m).__name__ == "LayerNorm2d" and hasattr(m, "eps")


def layernorm2d_channels(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """segment_anything ``LayerNorm2d`` (normalise over C of an NCHW tensor) as one ``layer_norm``."""
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), m.weight, m.bias, m.eps)
    return y.permute(0, 3, 1, 2)


def run_sequential(seq: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run an ``nn.Sequential`` replacing every ``LayerNorm2d`` by :func:`layernorm2d_channels`."""
    for m in seq:
        x = layernorm2d_channels(m, x) if _is_layernorm2d(m) else m(x)
    return x


class SamEncoderGraph(nn.Module):
    """SAM image encoder: (B, 3, S, S) float32 pre-processed image -> (B, 256, S/16, S/16) float32."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.encoder = sam.image_encoder
        self.img_size = int(sam.image_encoder.img_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        needed = ("patch_embed", "blocks", "neck")
        if not all(hasattr(enc, a) for a in needed) or not isinstance(enc.neck, nn.Sequential):
            return enc(images)  # another encoder family (e.g. TinyViT): export as is
        x = enc.patch_embed(images)
        if getattr(enc, "pos_embed", None) is not None:
            x = x + enc.pos_embed
        for blk in enc.blocks:
            x = blk(x)
        return run_sequential(enc.neck, x.permute(0, 3, 1, 2))


class SamDecoderGraph(nn.Module):
    """SAM prompt encoder + mask decoder over a prompt batch sharing one image embedding.

    forward(image_embeddings (1, C, h, w) f32, point_coords (B, N, 2) f32 in the encoder's input frame
    (after ``ResizeLongestSide.apply_coords``), point_labels (B, N) f32 in {1, 0, -1})
    -> (low_res_masks (B, 3, 4h, 4w) f32 logits, iou_predictions (B, 3) f32).
    Identical to ``SamPredictor.predict_torch(..., multimask_output=True, return_logits=True)`` before
    ``postprocess_masks``.
    """

    def __init__(self, sam: nn.Module, share_first_layer: bool = True) -> None:
        super().__init__()
        pe = sam.prompt_encoder
        self.share_first_layer = share_first_layer  # False: plain per-prompt layer 0 (for benchmarks)
        self.mask_decoder = sam.mask_decoder
        self.transformer = sam.mask_decoder.transformer
        self.register_buffer("gauss", pe.pe_layer.positional_encoding_gaussian_matrix.detach().clone())
        with torch.no_grad():
            self.register_buffer("image_pe", pe.get_dense_pe().detach().clone())  # (1, C, h, w)
        h_in, w_in = pe.input_image_size
        self.register_buffer("inv_size", torch.tensor([1.0 / w_in, 1.0 / h_in], dtype=torch.float32))
        self.not_a_point = pe.not_a_point_embed.weight  # (1, C)
        self.point_neg = pe.point_embeddings[0].weight
        self.point_pos = pe.point_embeddings[1].weight
        self.no_mask = pe.no_mask_embed.weight  # (1, C)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, N, 2), (B, N) -> (B, N+1, C) sparse embeddings (padding point appended, as SAM does)."""
        pad_pt = torch.zeros_like(coords[:, :1, :])
        pad_lb = torch.full_like(labels[:, :1], -1.0)
        coords = torch.cat([coords + 0.5, pad_pt], dim=1)
        labels = torch.cat([labels, pad_lb], dim=1).unsqueeze(-1)
        xy = coords * self.inv_size
        xy = (2 * xy - 1) @ self.gauss
        xy = (2 * math.pi) * xy
        emb = torch.cat([torch.sin(xy), torch.cos(xy)], dim=-1)
        is_pad = labels == -1
        emb = torch.where(is_pad, torch.zeros_like(emb), emb)
        emb = emb + is_pad.to(emb.dtype) * self.not_a_point
        emb = emb + (labels == 0).to(emb.dtype) * self.point_neg
        emb = emb + (labels == 1).to(emb.dtype) * self.point_pos
        return emb

    def forward(
        self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        md = self.mask_decoder
        tr = self.transformer
        sparse = self.embed_points(point_coords, point_labels)
        B = sparse.shape[0]
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(B, -1, -1), sparse], dim=1)
        _, c, h, w = image_embeddings.shape
        # TwoWayTransformer.forward, with the image-side work of layer 0 done once for the whole batch
        keys = (image_embeddings + self.no_mask.reshape(1, -1, 1, 1)).flatten(2).permute(0, 2, 1)  # (1, hw, C)
        key_pe = self.image_pe.flatten(2).permute(0, 2, 1)
        if self.share_first_layer:
            queries, keys = _first_layer_shared(tr.layers[0], tokens, keys, tokens, key_pe)  # keys: (B, hw, C)
            rest = tr.layers[1:]
        else:
            queries, keys, rest = tokens, keys.expand(B, -1, -1), tr.layers
        for layer in rest:
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=key_pe)
        attn_out = tr.final_attn_token_to_image(q=queries + tokens, k=keys + key_pe, v=keys)
        hs = tr.norm_final_attn(queries + attn_out)
        iou_token_out = hs[:, 0, :]
        n_mask = md.num_mask_tokens
        mask_tokens_out = hs[:, 1 : 1 + n_mask, :]
        src = keys.transpose(1, 2).reshape(B, c, h, w)
        up = run_sequential(md.output_upscaling, src)
        hyper = torch.stack([md.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in range(n_mask)], 1)
        _, cu, hu, wu = up.shape
        masks = (hyper @ up.reshape(B, cu, hu * wu)).reshape(B, n_mask, hu, wu)
        iou = md.iou_prediction_head(iou_token_out)
        return masks[:, 1:], iou[:, 1:]


def _attend(att: nn.Module, qp: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor) -> torch.Tensor:
    """segment_anything ``Attention`` after its input projections; batch axes broadcast (1 vs B)."""
    n = att.num_heads

    def heads(x: torch.Tensor) -> torch.Tensor:
        b, t, ci = x.shape
        return x.reshape(b, t, n, ci // n).transpose(1, 2)

    q, k, v = heads(qp), heads(kp), heads(vp)
    # scale q before the product (q may be the shared batch-1 side): no division of the (B, h, Nq, Nk) logits
    q = q * (1.0 / math.sqrt(q.shape[-1]))
    a = torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1)
    o = torch.matmul(a, v)
    b, _, t, _ = o.shape
    return att.out_proj(o.transpose(1, 2).reshape(b, t, -1))


def _first_layer_shared(
    layer: nn.Module, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayAttentionBlock.forward`` for keys shared by the batch ((1, hw, C) image tokens).

    Same maths; the projections of the image tokens (k, v of token->image attention, q of image->token
    attention) are computed once instead of once per prompt (about a quarter of the decoder's work).
    Returns (queries (B, T, C), keys (B, hw, C)).
    """
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)
    t2i = layer.cross_attn_token_to_image
    k_img = keys + key_pe
    out = _attend(t2i, t2i.q_proj(queries + query_pe), t2i.k_proj(k_img), t2i.v_proj(keys))
    queries = layer.norm2(queries + out)
    queries = layer.norm3(queries + layer.mlp(queries))
    i2t = layer.cross_attn_image_to_token
    q = queries + query_pe
    out = _attend(i2t, i2t.q_proj(k_img), i2t.k_proj(q), i2t.v_proj(queries))  # (B, hw, C)
    return queries, layer.norm4(keys + out)
