"""tusss.scoring.seed_on_logits against hand-computed values (docs/reference-code.md §5)."""

from __future__ import annotations

import numpy as np
import pytest

from tusss.errors import InputError
from tusss.scoring import BgMethod, FgMethod, seed_on_logits, seed_table


def L(x):  # logits whose softmax (gamma 1) is x / sum(x)
    return np.log(np.asarray(x, dtype=np.float64))


def test_bypath_softmax_dustbin_pow():
    # columns: fg0, fg1, dustbin; image has only fg0; K = bg + 2 fg
    z = L([[1, 2, 1], [6, 1, 1]])
    r = seed_on_logits(z, [0], 3, fg_method=FgMethod(softmax=1.0), bg_method=BgMethod("pow", pow=1.0))
    # softmax over all 3: [.25 .5 .25], [.75 .125 .125]; keep fg0; bg = 1 - max
    np.testing.assert_allclose(r.scores, [[0.75, 0.25, 0], [0.25, 0.75, 0]], atol=1e-7)
    assert r.labels.tolist() == [0, 1]
    np.testing.assert_allclose(r.conf, [0.75, 0.75], atol=1e-7)
    assert r.scores.dtype == np.float32 and r.labels.dtype == np.int64 and r.conf.dtype == np.float32


def test_select_first_softmax():
    z = L([[1, 2, 1], [6, 1, 1]])
    fgm = {"softmax": 1.0, "norm": False, "bypath_suppress": False}
    r = seed_on_logits(z, [0, 1], 3, fg_method=fgm, bg_method={"method": "pow", "pow": 1.0})
    # softmax over {fg0, fg1}: [1/3 2/3], [6/7 1/7]; bg = [1/3, 1/7]
    np.testing.assert_allclose(r.scores, [[1 / 3, 1 / 3, 2 / 3], [1 / 7, 6 / 7, 1 / 7]], atol=1e-7)
    assert r.labels.tolist() == [2, 1]
    # single candidate class, select first: softmax = 1 -> bg = 0
    r1 = seed_on_logits(z, [1], 3, fg_method=fgm, bg_method={"method": "pow", "pow": 1.0})
    np.testing.assert_allclose(r1.scores, [[0, 0, 1], [0, 0, 1]], atol=1e-7)


def test_norm_minmax_and_pow_exponent():
    z = np.array([[0.2, 0.5], [0.6, -0.1], [1.0, 0.3]])
    r = seed_on_logits(z, [0, 1], 3, fg_method=FgMethod(softmax=None, norm=True),
                       bg_method=BgMethod("pow", pow=0.5))
    e = 1e-7
    fg0 = np.array([0.0, 0.4, 0.8]) / (0.8 + e)
    fg1 = np.array([0.5, 0.0, 0.3]) / (0.5 + e)
    bg = (1 - np.maximum(fg0, fg1)) ** 0.5
    np.testing.assert_allclose(r.scores, np.stack([bg, fg0, fg1], 1), rtol=1e-6, atol=1e-7)
    # row1: bg sqrt(.5)=.707 > .5 -> bg; rows 0, 2: fg at 1.0
    assert r.labels.tolist() == [2, 0, 1]


def test_single_mask_norm_gives_zero_fg():
    r = seed_on_logits(np.array([[3.0, 1.0]]), [0, 1], 3, fg_method=FgMethod(softmax=1.0, norm=True),
                       bg_method=BgMethod("pow", pow=2.0))
    np.testing.assert_allclose(r.scores, [[1, 0, 0]], atol=1e-7)
    assert r.labels.tolist() == [0]


def test_l1_no_bg():
    z = np.array([[1.0, 3.0], [2.0, 2.0]])
    r = seed_on_logits(z, [0, 1], 2, fg_method=FgMethod(softmax=None, L1=True), bg_method=BgMethod("no_bg"))
    np.testing.assert_allclose(r.scores, [[0.25, 0.75], [0.5, 0.5]])
    assert r.labels.tolist() == [1, 0]  # no bg: index i -> F[i]; tie -> first
    np.testing.assert_allclose(r.conf, [0.75, 0.5])
    # class set subset, no bg: ids are F itself
    r2 = seed_on_logits(z, [1], 2, fg_method=FgMethod(softmax=None, L1=True), bg_method=BgMethod("no_bg"))
    np.testing.assert_allclose(r2.scores, [[0, 0.75], [0, 0.5]])
    assert r2.labels.tolist() == [1, 1]


def test_l1_then_softmax_order():
    z = np.array([[1.0, 3.0]])
    r = seed_on_logits(z, [0, 1], 2, fg_method=FgMethod(softmax=2.0, L1=True), bg_method=BgMethod("no_bg"))
    # L1: [.25 .75]; softmax(2x): e^.5 / (e^.5 + e^1.5)
    p0 = np.exp(0.5) / (np.exp(0.5) + np.exp(1.5))
    np.testing.assert_allclose(r.scores, [[p0, 1 - p0]], rtol=1e-6)


def test_is_score_and_thresh_bg():
    z = np.array([[0.0, 0.5, 0.5]])  # scores; fg0, fg1, dustbin
    r = seed_on_logits(z, [1], 3, fg_method=FgMethod(softmax=1.0, is_score=True),
                       bg_method=BgMethod("thresh", thresh=0.6))
    # entries < 1e-8 -> -inf: softmax = [0, .5, .5]; keep fg1 -> .5; bg constant .6
    np.testing.assert_allclose(r.scores, [[0.6, 0, 0.5]], atol=1e-7)
    assert r.labels.tolist() == [0] and r.conf.tolist() == [pytest.approx(0.6)]
    # without is_score, zeros compete: softmax([0,.5,.5])[1] = e^.5 / (1 + 2 e^.5)
    r2 = seed_on_logits(z, [1], 3, fg_method=FgMethod(softmax=1.0), bg_method=BgMethod("thresh", thresh=0.1))
    np.testing.assert_allclose(r2.scores[0, 2], np.exp(0.5) / (1 + 2 * np.exp(0.5)), rtol=1e-6)
    assert r2.labels.tolist() == [2]
    # all entries < 1e-8: zeros (documented deviation from NaN)
    r3 = seed_on_logits(np.zeros((1, 3)), [0, 1], 3, fg_method=FgMethod(softmax=1.0, is_score=True))
    np.testing.assert_allclose(r3.scores, [[1, 0, 0]])


def test_bg_logit_alpha_bg():
    z = L([[1, 1, 2], [1, 1, 6]])  # columns bg, fg0, fg1
    r = seed_on_logits(z, [1], 3, with_bg_logit=True, fg_method=FgMethod(softmax=1.0),
                       bg_method=BgMethod("alpha_bg", alpha=0.5))
    # softmax rows: [.25 .25 .5], [1/8 1/8 6/8]; keep {bg, fg1}; bg ** .5
    np.testing.assert_allclose(r.scores, [[0.5, 0, 0.5], [np.sqrt(0.125), 0, 0.75]], rtol=1e-6)
    assert r.labels.tolist() == [0, 2]
    # default bg method with a bg logit is no_bg
    r2 = seed_on_logits(z, [0, 1], 3, with_bg_logit=True, fg_method=FgMethod(softmax=1.0))
    np.testing.assert_allclose(r2.scores, [[0.25, 0.25, 0.5], [0.125, 0.125, 0.75]], rtol=1e-6)
    assert r2.labels.tolist() == [2, 2]


def test_empty_class_set_is_background():
    r = seed_on_logits(np.array([[1.0, 2.0]]), [], 3, fg_method=FgMethod(softmax=1.0))
    np.testing.assert_allclose(r.scores, [[1, 0, 0]])
    assert r.labels.tolist() == [0]


def test_zero_masks():
    r = seed_on_logits(np.zeros((0, 3)), [0], 3)
    assert r.scores.shape == (0, 3) and r.labels.shape == (0,) and r.conf.shape == (0,)


def test_errors():
    z = np.zeros((2, 3))
    with pytest.raises(InputError, match="prepends"):
        seed_on_logits(z, [0], 3, with_bg_logit=True, bg_method=BgMethod("pow"))
    with pytest.raises(InputError, match="alpha_bg"):
        seed_on_logits(z, [0], 3, bg_method=BgMethod("alpha_bg"))
    with pytest.raises(InputError, match="out of range"):
        seed_on_logits(z, [2], 3)
    with pytest.raises(InputError, match="NaN"):
        seed_on_logits(np.array([[np.nan, 0.0]]), [0], 3)
    with pytest.raises(InputError, match="columns"):
        seed_on_logits(np.zeros((2, 1)), [0, 1], 3)
    with pytest.raises(InputError):
        BgMethod("nope")
    with pytest.raises(InputError):
        FgMethod.from_dict({"softmax": 1.0})
    with pytest.raises(InputError, match="needs"):
        BgMethod.from_dict({"method": "pow"})
    with pytest.raises(InputError, match="empty class set"):
        seed_on_logits(z, [], 3, bg_method=BgMethod("no_bg"))


def test_seed_table_matches_per_image():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(9, 5))
    off = np.array([0, 3, 3, 9])
    sets = [[0, 2], [1], [3, 1, 0]]
    kw = dict(fg_method=FgMethod(softmax=1.0, norm=True), bg_method=BgMethod("pow", pow=2.0))
    t = seed_table(z, off, sets, 5, **kw)
    for i in (0, 2):
        r = seed_on_logits(z[off[i]:off[i + 1]], sets[i], 5, **kw)
        np.testing.assert_array_equal(t.scores[off[i]:off[i + 1]], r.scores)
        np.testing.assert_array_equal(t.labels[off[i]:off[i + 1]], r.labels)
    tv = seed_table(z, off, None, 5, **kw)  # val mode: all 4 fg classes
    r = seed_on_logits(z[3:9], [0, 1, 2, 3], 5, **kw)
    np.testing.assert_array_equal(tv.scores[3:9], r.scores)
    with pytest.raises(InputError):
        seed_table(z, np.array([0, 4]), None, 5)
