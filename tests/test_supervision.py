"""P^c per supervision type (docs/reference-code.md §6.2) against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from tusss.errors import InputError
from tusss.scoring import BgMethod, FgMethod, seed_on_logits
from tusss.supervision import (
    bg_fg_balance,
    full_supervision,
    group_offsets,
    prob2soft_label,
    semi_balance,
    semi_supervision,
    weak_supervision,
)

GT = np.array([[1.0, 0, 0], [0.5, 0.5, 0], [0, 0, 1.0], [0, 1.0, 0]], np.float32)
OFF = np.array([0, 2, 4])


def test_group_offsets():
    np.testing.assert_array_equal(group_offsets(["a", "a", "b", "c", "c"]), [0, 2, 3, 5])
    with pytest.raises(InputError, match="grouped"):
        group_offsets([1, 2, 1])


def test_full():
    s = full_supervision(GT, OFF)
    np.testing.assert_array_equal(s.Pc, GT)
    assert s.labeled.all() and s.kind == "full"
    assert [c.tolist() for c in s.class_sets] == [[0], [0, 1]]  # fg indices present
    np.testing.assert_array_equal(s.cls_lb()[0], [True, True, False])
    with pytest.raises(InputError):
        full_supervision(GT * 2, OFF)


def test_balances_by_hand():
    Y = np.array([[3.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    # bg mass 4, fg mass 1 -> both 2.5
    np.testing.assert_allclose(bg_fg_balance(Y), [[1.875, 2.5, 0], [0.625, 0, 0]])
    lab = np.array([True, False])
    # labelled mass 4, unlabelled 1 -> both 2.5
    np.testing.assert_allclose(semi_balance(Y, lab), [[1.875, 0.625, 0], [2.5, 0, 0]])


def test_semi_zero_rows_and_scores():
    s = semi_supervision(GT, np.array([True, False]), OFF, balance=None)
    np.testing.assert_array_equal(s.Pc, [[1, 0, 0], [0.5, 0.5, 0], [0, 0, 0], [0, 0, 0]])
    assert s.labeled.tolist() == [True, True, False, False] and s.class_sets[1] is None
    z = np.full((4, 3), 0.5, np.float32)
    s2 = semi_supervision(GT, np.array([True, False]), OFF, zero_shot_scores=z, balance=None)
    # semi_balance (default with scores): labelled mass 2, unlabelled 3 -> both 2.5
    np.testing.assert_allclose(s2.Pc, [[1.25, 0, 0], [0.625, 0.625, 0], [5 / 12] * 3, [5 / 12] * 3], rtol=1e-6)
    s3 = semi_supervision(GT, np.array([True, False]), OFF)  # 'eq' bg/fg balance: bg 1.5, fg .5 -> 1, 1
    np.testing.assert_allclose(s3.Pc[:2], [[2 / 3, 0, 0], [1 / 3, 1, 0]], rtol=1e-6)
    with pytest.raises(InputError):
        semi_supervision(GT, np.array([False, False]), OFF)


def test_weak_matches_seed_on_logits():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 2 + 3)) * 3  # 2 fg names + 3 dustbins
    labels = [[1], [0, 1]]
    s = weak_supervision(z, labels, OFF, 3, bg_method=BgMethod("pow", pow=2.0))
    for i in range(2):
        r = seed_on_logits(z[OFF[i]:OFF[i + 1]], labels[i], 3, fg_method=FgMethod(softmax=1.0, norm=True),
                           bg_method=BgMethod("pow", pow=2.0))
        np.testing.assert_allclose(s.Pc[OFF[i]:OFF[i + 1]], r.scores, rtol=1e-5, atol=1e-7)
    assert s.Pc[0, 1] == 0 and s.gt is None and not s.labeled.any()
    with pytest.raises(InputError, match="out of range"):
        weak_supervision(z, [[2], [0]], OFF, 3)
    # paper variant: softmax over the image's classes only (c -> inf), bg = 1 - max
    sp = weak_supervision(z, labels, OFF, 3, variant="paper")
    e = np.exp(z[2:4, :2] - z[2:4, :2].max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    np.testing.assert_allclose(sp.Pc[2:4], np.c_[1 - p.max(1), p], rtol=1e-5)
    np.testing.assert_allclose(sp.Pc[0:2], [[0, 0, 1], [0, 0, 1]], atol=1e-7)  # single class -> 1, bg 0


def test_prob2soft_label_by_hand():
    sc = np.array([[0.5, 0.49, 0.9], [0.0, 0.0, 0.0]])
    allow = np.array([[True, True, False], [False, False, False]])
    t = prob2soft_label(sc, allow, gamma=100)
    e = np.exp(-1.0)
    np.testing.assert_allclose(t, [[1 / (1 + e), e / (1 + e), 0], [0, 0, 0]], rtol=1e-6)
