"""mIoU and mask F1 (docs/reference-code.md §7) against hand-computed confusion matrices and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from tusss.errors import InputError
from tusss.metrics import ConfusionMatrix, confusion_matrix, mask_f1, miou, scores_from_confusion


def test_hand_computed_confusion_and_miou():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 2]])
    cm = confusion_matrix(pred, gt, 3)
    # rows GT, cols pred; the 255 pixel is skipped
    assert cm.tolist() == [[1, 1, 0], [0, 2, 1], [1, 0, 1]]
    s = scores_from_confusion(cm)
    # IoU0 = 1/(1+1+1) ; IoU1 = 2/(2+1+1) ; IoU2 = 1/(1+1+1)
    np.testing.assert_allclose(s.iou, [1 / 3, 2 / 4, 1 / 3])
    assert s.miou == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert s.accuracy == pytest.approx(4 / 7)
    # class 2 never in GT -> not averaged (predicted once elsewhere)
    cm2 = confusion_matrix(np.array([0, 2, 1]), np.array([0, 0, 1]), 3)
    s2 = scores_from_confusion(cm2)
    assert s2.valid.tolist() == [True, True, False] and s2.iou[2] == 0
    assert s2.miou == pytest.approx((1 / 2 + 1) / 2)


def test_accumulator_equals_concatenation_and_sklearn():
    rng = np.random.default_rng(0)
    K = 5
    acc = ConfusionMatrix(K)
    preds, gts = [], []
    for _ in range(4):
        g = rng.integers(0, K, (6, 7))
        g[rng.random(g.shape) < 0.2] = 255
        p = rng.integers(0, K, (6, 7))
        acc.update(p, g)
        preds.append(p)
        gts.append(g)
    P = np.concatenate([p.ravel() for p in preds])
    G = np.concatenate([g.ravel() for g in gts])
    keep = G != 255
    sk = sk_confusion_matrix(G[keep], P[keep], labels=list(range(K)))
    np.testing.assert_array_equal(acc.matrix, sk)
    # IoU from sklearn's matrix by the textbook formula
    tp = np.diag(sk)
    iou = tp / (sk.sum(0) + sk.sum(1) - tp)
    assert acc.scores().miou == pytest.approx(iou[sk.sum(1) > 0].mean())
    assert miou(preds, gts, K) == pytest.approx(acc.miou)
    other = ConfusionMatrix(K)
    other.update(preds[0], gts[0])
    acc.merge(other)
    np.testing.assert_array_equal(acc.matrix, sk + confusion_matrix(preds[0], gts[0], K))


def test_mask_f1_matches_sklearn_conventions():
    rng = np.random.default_rng(3)
    K = 6
    vote = rng.integers(0, K - 1, 200)  # class 5 never in GT
    pred = np.where(rng.random(200) < 0.6, vote, rng.integers(0, K, 200))
    pred[pred == 3] = 4  # class 3 never predicted
    r = mask_f1(pred, vote, K)
    cm = sk_confusion_matrix(vote, pred, labels=list(range(K)))
    np.testing.assert_array_equal(r.confusion, cm)
    tp = np.diag(cm)
    predicted = np.flatnonzero(cm.sum(0) > 0)
    present = np.flatnonzero(cm.sum(1) > 0)
    defined = np.flatnonzero(tp > 0)  # the reference's F1_c is NaN where TP = 0
    assert r.accuracy == pytest.approx(accuracy_score(vote, pred))
    assert r.precision == pytest.approx(precision_score(vote, pred, labels=predicted, average="macro"))
    assert r.recall == pytest.approx(recall_score(vote, pred, labels=present, average="macro"))
    assert r.f1 == pytest.approx(f1_score(vote, pred, labels=defined, average="macro"))
    assert r.f1_zero == pytest.approx(f1_score(vote, pred, average="macro", zero_division=0))
    assert np.isnan(r.class_f1[3]) and np.isnan(r.class_f1[5])


def test_mask_f1_hand_computed():
    # 4 masks: GT votes [0, 1, 1, 2], predictions [0, 1, 2, 2]
    r = mask_f1(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]), 3)
    # P = [1, 1, 0.5], R = [1, 0.5, 1], F1 = [1, 2/3, 2/3]
    np.testing.assert_allclose(r.class_f1, [1, 2 / 3, 2 / 3])
    assert r.f1 == pytest.approx((1 + 4 / 3) / 3) and r.accuracy == pytest.approx(0.75)
    assert r.precision == pytest.approx(2.5 / 3) and r.recall == pytest.approx(2.5 / 3)


def test_metric_input_errors():
    with pytest.raises(InputError, match="shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)
    with pytest.raises(InputError, match="outside"):
        confusion_matrix(np.array([0, 255]), np.array([0, 1]), 3)
    # a prediction of 255 where GT is ignored is fine
    assert confusion_matrix(np.array([0, 255]), np.array([0, 255]), 3).sum() == 1
    with pytest.raises(InputError, match="integer"):
        confusion_matrix(np.array([0.5]), np.array([0]), 3)
    with pytest.raises(InputError, match="vote_lb"):
        mask_f1(np.array([0]), np.array([255]), 3)
    assert np.isnan(ConfusionMatrix(3).scores().miou)
