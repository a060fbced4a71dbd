"""Per-token mask-membership bitsets (docs/reference-code.md §2 "Attention bias").

A token's bitset packs its membership in the M masks of one image/window into ceil(M/32) int32 words
(bit ``m % 32`` of word ``m // 32`` is set when the token lies in mask m). Two tokens *share a mask*
(bias 0 in DBA-CLIP's last block) iff the AND of their bitsets is non-zero in at least one word.
"""

from __future__ import annotations

import torch

from tusss.errors import InputError

__all__ = ["mask_bitsets", "unpack_bitsets", "num_words"]


def num_words(num_masks: int) -> int:
    """Number of int32 words per token for ``num_masks`` masks (at least 1)."""
    return max(1, (int(num_masks) + 31) // 32)


def mask_bitsets(token_masks: torch.Tensor) -> torch.Tensor:
    """Pack token masks into bitsets.

    Args:
        token_masks: (B, M, N) bool, membership of each of the N = L-1 patch tokens in each of M masks.
    Returns:
        (B, N, ceil(M/32)) int32, contiguous, on the same device.
    """
    if not isinstance(token_masks, torch.Tensor) or token_masks.dim() != 3:
        raise InputError(f"token_masks must be a (B, M, N) bool tensor, got {type(token_masks).__name__} "
                         f"of shape {tuple(getattr(token_masks, 'shape', ()))}")
    if token_masks.dtype != torch.bool:
        raise InputError(f"token_masks must have dtype bool, got {token_masks.dtype}")
    b, m, n = token_masks.shape
    nw = num_words(m)
    pad = nw * 32 - m
    tm = token_masks
    if pad:
        tm = torch.cat([tm, tm.new_zeros(b, pad, n)], dim=1)
    weights = torch.bitwise_left_shift(
        torch.ones(32, dtype=torch.int64, device=tm.device), torch.arange(32, device=tm.device))
    words = (tm.view(b, nw, 32, n).to(torch.int64) * weights.view(1, 1, 32, 1)).sum(dim=2)  # (B, nw, N)
    words = torch.where(words >= 2**31, words - 2**32, words)  # two's complement into int32 range
    return words.to(torch.int32).transpose(1, 2).contiguous()


def unpack_bitsets(bitsets: torch.Tensor, num_masks: int | None = None) -> torch.Tensor:
    """Inverse of :func:`mask_bitsets`: (B, N, W) int32 -> (B, M, N) bool (M = 32 W unless given)."""
    if bitsets.dim() != 3 or bitsets.dtype != torch.int32:
        raise InputError(f"bitsets must be a (B, N, W) int32 tensor, got {bitsets.dtype} {tuple(bitsets.shape)}")
    b, n, nw = bitsets.shape
    shifts = torch.arange(32, device=bitsets.device, dtype=torch.int32)
    bits = torch.bitwise_and(torch.bitwise_right_shift(bitsets.unsqueeze(-1), shifts), 1)  # (B, N, W, 32)
    tm = bits.reshape(b, n, nw * 32).transpose(1, 2).bool()
    if num_masks is not None:
        tm = tm[:, :num_masks]
    return tm
