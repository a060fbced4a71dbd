"""Rock-sand-water (RSW) filter: makes SAM's multi-level masks "minimal-overlapping" (docs/reference-code.md §1)."""

from __future__ import annotations

import numpy as np
import torch

from tusss.errors import InputError


def _as_bool_tensor(masks: np.ndarray | torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    if isinstance(masks, torch.Tensor):
        t = masks
    else:
        t = torch.from_numpy(np.ascontiguousarray(masks))
    if t.dtype != torch.bool:
        raise InputError(f"rock_sand_water: masks must be bool, got {t.dtype}")
    return t.to(device) if device is not None else t


def intersection_areas(a: torch.Tensor, b: torch.Tensor, chunk_size: int = 0) -> torch.Tensor:
    """|a_i ∩ b_j| for bool masks a (N1, P) and b (N2, P) -> (N1, N2) float32 pixel counts.

    One matrix product of the flattened masks per chunk of ``chunk_size`` rows of ``a`` (0 = one chunk).
    float32 products are exact for counts below 2**24 pixels; larger images multiply in float64.
    """
    dtype = torch.float32 if a.shape[1] < (1 << 24) else torch.float64
    bf = b.to(dtype)
    step = a.shape[0] if chunk_size <= 0 else chunk_size
    out = [a[i : i + step].to(dtype) @ bf.T for i in range(0, a.shape[0], max(step, 1))]
    if not out:
        return torch.zeros((0, b.shape[0]), dtype=torch.float32, device=b.device)
    return torch.cat(out, 0).to(torch.float32)


def rock_sand_water(
    masks: np.ndarray | torch.Tensor,
    level: np.ndarray | torch.Tensor,
    thresh: float = 0.3,
    chunk_size: int = 0,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Indices of the masks kept by the rock-sand-water filter, in TUSS's output order.

    Container := all level-2 ("whole") masks. For level 1, then level 0: a candidate m is kept iff
    ``max_c |m ∩ c| / |m| < thresh`` over the masks c already in the container; the kept candidates then
    join the container (so level-0 masks are also compared with kept level-1 masks). Masks of the same
    level are never compared with each other. As in TUSS, an empty container keeps every candidate, and
    a zero-area candidate (recall 0/0 = NaN) is dropped when the container is not empty.

    Args:
        masks: (M, H, W) bool masks (numpy or torch).
        level: (M,) ints in {0, 1, 2}.
        thresh: recall threshold (reference: 0.3).
        chunk_size: candidates per matrix product (0 = all at once); memory only.
        device: torch device for the products (default: where ``masks`` are).

    Returns:
        (K,) int64 indices into ``masks``: the level-2 masks, then the kept level-1, then the kept level-0,
        each group in input order (the order TUSS stores them in).
    """
    m = _as_bool_tensor(masks, device)
    if m.ndim != 3:
        raise InputError(f"rock_sand_water: masks must have shape (M, H, W), got {tuple(m.shape)}")
    lv = np.asarray(level.cpu() if isinstance(level, torch.Tensor) else level).reshape(-1)
    if lv.shape[0] != m.shape[0]:
        raise InputError(f"rock_sand_water: {m.shape[0]} masks but {lv.shape[0]} levels")
    if lv.size and not np.isin(lv, (0, 1, 2)).all():
        raise InputError(f"rock_sand_water: levels must be 0, 1 or 2, got {np.unique(lv).tolist()}")
    if not np.isfinite(thresh):
        raise InputError(f"rock_sand_water: thresh must be finite, got {thresh}")
    flat = m.reshape(m.shape[0], m.shape[1] * m.shape[2])

    container = np.flatnonzero(lv == 2)
    for lvl in (1, 0):
        cand = np.flatnonzero(lv == lvl)
        if cand.size == 0:
            continue
        if container.size == 0:  # nothing to compare with: all candidates join (TUSS behaviour)
            container = cand
            continue
        cm = flat[torch.as_tensor(cand, device=flat.device)]
        inter = intersection_areas(cm, flat[torch.as_tensor(container, device=flat.device)], chunk_size)
        area = cm.sum(1, dtype=torch.int64).to(torch.float32)
        # float32 recall compared in float32, as TUSS does; NaN (empty candidate) propagates through amax
        recall = inter / area[:, None]  # (Nc, Ncontainer)
        keep = (recall.amax(1) < thresh).cpu().numpy()  # NaN -> False
        container = np.concatenate([container, cand[keep]])
    return container.astype(np.int64)
