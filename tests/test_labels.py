"""Vote fractions and mask->pixel painting (docs/reference-code.md §1, §5) on hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest

from tusss.errors import InputError
from tusss.labels import paint_labels, paint_order, vote_fractions, vote_labels


def test_vote_fractions_hand_made():
    gt = np.array([[0, 0, 1, 1], [2, 255, 1, 255], [255, 255, 255, 255]], np.uint8)
    m = np.zeros((3, 3, 4), bool)
    m[0, :2, :2] = True  # 0,0,2,255 -> [2/3, 0, 1/3]
    m[1, :2, 2:] = True  # 1,1,1,255 -> [0, 1, 0]
    m[2, 2, :] = True  # all ignored -> zeros
    f = vote_fractions(m, gt, 3)
    assert f.dtype == np.float32 and f.shape == (3, 3)
    np.testing.assert_allclose(f, [[2 / 3, 0, 1 / 3], [0, 1, 0], [0, 0, 0]], rtol=1e-6)
    assert vote_labels(f).tolist() == [0, 1, 0]  # all-ignore mask -> class 0


def test_vote_fractions_random_against_naive():
    rng = np.random.default_rng(0)
    K = 7
    gt = rng.integers(0, K, (15, 17))
    gt[rng.random(gt.shape) < 0.1] = 255
    masks = rng.random((9, 15, 17)) < 0.3
    f = vote_fractions(masks, gt, K)
    for m in range(9):
        vals = gt[masks[m]]
        vals = vals[vals != 255]
        want = np.array([(vals == c).sum() for c in range(K)], float) / max(len(vals), 1)
        np.testing.assert_allclose(f[m], want, rtol=1e-6)
    with pytest.raises(InputError, match="outside"):
        vote_fractions(masks, np.full((15, 17), 9), K)
    with pytest.raises(InputError, match="size"):
        vote_fractions(masks, gt[:5], K)


def test_paint_priority_level_then_conf():
    H, W = 4, 6
    m = np.zeros((4, H, W), bool)
    m[0, :, :] = True  # level 0, covers all, very confident
    m[1, :, :3] = True  # level 2, low conf
    m[2, :2, :4] = True  # level 2, higher conf -> wins over mask 1 on overlap
    m[3, 3, 5] = True  # level 1
    labels = np.array([1, 2, 3, 4])
    level = np.array([0, 2, 2, 1])
    conf = np.array([0.99, 0.2, 0.5, 0.1])
    got = paint_labels(m, labels, level, conf)
    want = np.array([
        [3, 3, 3, 3, 1, 1],
        [3, 3, 3, 3, 1, 1],
        [2, 2, 2, 1, 1, 1],
        [2, 2, 2, 1, 1, 4],
    ])  # fmt: skip
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.uint8
    assert paint_order(level, conf).tolist() == [0, 3, 1, 2]


def test_paint_fill_ties_and_empty():
    m = np.zeros((2, 2, 3), bool)
    m[0, 0, :2] = True
    m[1, 0, 1:] = True
    # equal (level, conf): the later mask wins (stable order)
    got = paint_labels(m, np.array([5, 6]), np.array([1, 1]), np.array([0.3, 0.3]), fill=9)
    np.testing.assert_array_equal(got, [[5, 6, 6], [9, 9, 9]])
    empty = paint_labels(np.zeros((0, 2, 3), bool), np.zeros(0, int), np.zeros(0), np.zeros(0), fill=7)
    np.testing.assert_array_equal(empty, np.full((2, 3), 7))


def test_paint_random_against_naive_winner():
    rng = np.random.default_rng(5)
    M, H, W = 12, 9, 11
    m = rng.random((M, H, W)) < 0.3
    labels = rng.integers(0, 20, M)
    level = rng.integers(0, 3, M)
    conf = rng.random(M)
    got = paint_labels(m, labels, level, conf, fill=255)
    for y in range(H):
        for x in range(W):
            cover = [k for k in range(M) if m[k, y, x]]
            if not cover:
                assert got[y, x] == 255
            else:
                best = max(cover, key=lambda k: (level[k], conf[k], k))
                assert got[y, x] == labels[best]


def test_paint_errors():
    m = np.ones((2, 2, 2), bool)
    with pytest.raises(InputError, match="labels has 1"):
        paint_labels(m, np.array([1]), np.array([0, 0]), np.array([0.1, 0.2]))
    with pytest.raises(InputError, match="NaN"):
        paint_labels(m, np.array([1, 2]), np.array([0, 0]), np.array([np.nan, 0.2]))
    with pytest.raises(InputError, match="fit"):
        paint_labels(m, np.array([1, 300]), np.array([0, 0]), np.array([0.1, 0.2]))
    with pytest.raises(InputError, match="bool"):
        paint_labels(m.astype(np.uint8), np.array([1, 2]), np.array([0, 0]), np.array([0.1, 0.2]))
