"""Rock-sand-water filter (docs/reference-code.md §1) on hand-made masks with known answers and against a naive loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tusss.errors import InputError
from tusss.masks import rock_sand_water


def rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def naive_rsw(masks: np.ndarray, level: np.ndarray, thr: float) -> list[int]:
    container = [i for i in range(len(masks)) if level[i] == 2]
    for lvl in (1, 0):
        cand = [i for i in range(len(masks)) if level[i] == lvl]
        if not container:
            container += cand
            continue
        kept = []
        for i in cand:
            a = int(masks[i].sum())
            if a == 0:
                continue
            if max(int((masks[i] & masks[c]).sum()) / a for c in container) < thr:
                kept.append(i)
        container += kept
    return container


def test_hand_made_chain() -> None:
    H = W = 10
    whole = rect(H, W, 0, 10, 0, 5)  # level 2: left half
    part_in = rect(H, W, 0, 4, 0, 4)  # level 1, inside whole: recall 1 -> dropped
    part_out = rect(H, W, 0, 10, 6, 10)  # level 1, disjoint: kept
    part_edge = rect(H, W, 8, 10, 3, 10)  # level 1: 14 px, 4 in whole (0.286 < 0.3) -> kept
    sub_chain = rect(H, W, 2, 4, 7, 9)  # level 0 inside kept part_out -> dropped (chained growth)
    sub_free = rect(H, W, 5, 6, 5, 6)  # level 0, 1 px column x=5 in no mask -> kept
    sub_overlap_same = rect(H, W, 5, 7, 5, 6)  # level 0 overlapping sub_free (same level): kept
    sub_dropped_part = rect(H, W, 1, 3, 1, 3)  # level 0 inside whole -> dropped
    masks = np.stack([part_in, whole, sub_chain, part_out, sub_free, part_edge, sub_overlap_same, sub_dropped_part])
    level = np.array([1, 2, 0, 1, 0, 1, 0, 0])
    keep = rock_sand_water(masks, level, 0.3)
    # TUSS order: level 2, then kept level 1 (input order), then kept level 0 (input order)
    assert keep.tolist() == [1, 3, 5, 4, 6]
    assert keep.dtype == np.int64


def test_threshold_is_strict() -> None:
    H, W = 1, 10
    whole = rect(H, W, 0, 1, 0, 3)
    m = rect(H, W, 0, 1, 0, 10)  # recall 3/10 == thresh -> not kept (keep iff < thresh)
    assert rock_sand_water(np.stack([whole, m]), np.array([2, 1]), 0.3).tolist() == [0]
    assert rock_sand_water(np.stack([whole, m]), np.array([2, 1]), 0.31).tolist() == [0, 1]


def test_same_level_never_compared_and_empty_container() -> None:
    H = W = 6
    a = rect(H, W, 0, 6, 0, 6)
    b = rect(H, W, 0, 3, 0, 3)
    # two identical level-2 masks both stay; no level-2 masks: level 1 forms the container
    assert rock_sand_water(np.stack([a, a]), np.array([2, 2])).tolist() == [0, 1]
    assert rock_sand_water(np.stack([b, a, a]), np.array([0, 1, 1])).tolist() == [1, 2]
    # only level 0
    assert rock_sand_water(np.stack([a, b]), np.array([0, 0])).tolist() == [0, 1]
    assert rock_sand_water(np.zeros((0, 4, 4), bool), np.zeros(0, int)).tolist() == []


def test_empty_candidate_dropped_like_tuss() -> None:
    H = W = 4
    empty = np.zeros((H, W), bool)
    full = np.ones((H, W), bool)
    assert rock_sand_water(np.stack([full, empty]), np.array([2, 1])).tolist() == [0]
    assert rock_sand_water(np.stack([empty]), np.array([1])).tolist() == [0]  # empty container keeps all


@pytest.mark.parametrize("chunk", [0, 1, 3, 100])
def test_random_against_naive(chunk: int) -> None:
    rng = np.random.default_rng(chunk)
    H, W, M = 24, 20, 40
    masks = np.zeros((M, H, W), bool)
    for i in range(M):
        y0, x0 = rng.integers(0, H - 2), rng.integers(0, W - 2)
        masks[i, y0 : y0 + rng.integers(2, H), x0 : x0 + rng.integers(2, W)] = True
    level = rng.integers(0, 3, M)
    for thr in (0.1, 0.3, 0.7):
        got = rock_sand_water(masks, level, thr, chunk_size=chunk)
        assert got.tolist() == naive_rsw(masks, level, thr)
    # torch input gives the same answer
    assert rock_sand_water(torch.from_numpy(masks), torch.from_numpy(level), 0.3, chunk).tolist() == naive_rsw(
        masks, level, 0.3
    )


def test_bad_inputs() -> None:
    m = np.zeros((2, 3, 3), bool)
    with pytest.raises(InputError, match="bool"):
        rock_sand_water(m.astype(np.uint8), np.array([0, 1]))
    with pytest.raises(InputError, match="levels"):
        rock_sand_water(m, np.array([0, 1, 2]))
    with pytest.raises(InputError, match="0, 1 or 2"):
        rock_sand_water(m, np.array([0, 3]))
    with pytest.raises(InputError, match=r"\(M, H, W\)"):
        rock_sand_water(m[0], np.array([0, 1, 2]))
