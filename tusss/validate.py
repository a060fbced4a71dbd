"""Input checks shared by every stage. Each raises :class:`tusss.errors.InputError` naming the problem."""

from __future__ import annotations

import numpy as np

from tusss.errors import InputError


def check_image(image: object, name: str = "image") -> np.ndarray:
    """Return ``image`` as a contiguous ``(H, W, 3) uint8`` RGB array, or raise InputError."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"{name} must be a numpy array of shape (H, W, 3) and dtype uint8, got {type(image)}")
    if image.dtype != np.uint8:
        raise InputError(f"{name} must have dtype uint8 (RGB 0..255), got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{name} must have shape (H, W, 3), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"{name} is empty: shape {image.shape}")
    return np.ascontiguousarray(image)


def check_masks(masks: object, hw: tuple[int, int], name: str = "masks", allow_empty: bool = False) -> np.ndarray:
    """Return ``masks`` as a ``(M, H, W) bool`` array matching the image size ``hw``, or raise InputError.

    An empty list (M = 0) is refused unless ``allow_empty``; an all-False mask is always refused.
    """
    if not isinstance(masks, np.ndarray):
        raise InputError(f"{name} must be a numpy bool array of shape (M, H, W), got {type(masks)}")
    if masks.ndim != 3:
        raise InputError(f"{name} must have shape (M, H, W), got {masks.shape}")
    if masks.dtype != np.bool_:
        raise InputError(f"{name} must have dtype bool, got {masks.dtype}")
    if tuple(masks.shape[1:]) != tuple(hw):
        raise InputError(f"{name} have size {tuple(masks.shape[1:])} but the image is {tuple(hw)}")
    if masks.shape[0] == 0 and not allow_empty:
        raise InputError(f"{name} is an empty list (M = 0): nothing to embed or label")
    if masks.shape[0]:
        empty = np.flatnonzero(~masks.reshape(masks.shape[0], -1).any(1))
        if empty.size:
            raise InputError(f"{name} {empty[:10].tolist()} are all-False (empty masks)")
    return masks


def check_finite(x: np.ndarray, name: str) -> None:
    """Raise InputError if ``x`` holds NaN or inf."""
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise InputError(f"{name} contains {bad} NaN/inf values")
