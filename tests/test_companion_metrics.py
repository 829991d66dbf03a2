"""Diagnostic metrics: hand-worked ROC/AUC, the Mann-Whitney relation, sensitivity/specificity (book/11)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu

from wsbus.companion import binary_auc, binary_metrics, binary_roc_curve, classification_metrics


def test_roc_and_auc_hand_worked():
    # negatives score 0.1, 0.4; positives 0.35, 0.8, 0.4.
    # pairs (pos > neg): 0.35>0.1 yes, 0.35>0.4 no; 0.8 beats both; 0.4>0.1 yes, 0.4=0.4 tie (1/2)
    # AUC = (1 + 2 + 1.5) / 6 = 0.75
    y = [0, 0, 1, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8, 0.4]
    assert binary_auc(y, s) == pytest.approx(0.75)
    fpr, tpr, thr = binary_roc_curve(y, s)
    # thresholds 0.8, 0.4, 0.35, 0.1 (+ a starting point with nothing positive)
    pts = set(zip(np.round(fpr, 6), np.round(tpr, 6)))
    assert {(0.0, 0.0), (0.0, round(1 / 3, 6)), (0.5, round(2 / 3, 6)), (0.5, 1.0), (1.0, 1.0)} == pts
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # trapezoidal area of those points is the AUC
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)


def test_binary_metrics_sensitivity_specificity_hand_worked():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.4, 0.55])
    m = binary_metrics(y, s, threshold=0.5)
    # positives above 0.5: 3 of 4; negatives below 0.5: 3 of 5 (0.7 and 0.55 are false positives)
    assert m.sensitivity == pytest.approx(3 / 4)
    assert m.specificity == pytest.approx(3 / 5)
    assert (m.n_positive, m.n_negative) == (4, 5)
    # AUC by counting: each positive vs 5 negatives -> 0.9: 5, 0.8: 5, 0.6: 4, 0.3: 2 -> 16/20
    assert m.auc == pytest.approx(16 / 20)
    pred = np.array([True] * 9)
    m2 = binary_metrics(y, s, predicted=pred)
    assert (m2.sensitivity, m2.specificity) == (1.0, 0.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=2, max_size=40))
def test_auc_is_mann_whitney_u(pairs):
    y = np.array([p[0] for p in pairs], dtype=int)
    s = np.array([p[1] for p in pairs], dtype=float) / 6.0  # few distinct values: many ties
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        assert math.isnan(binary_auc(y, s))
        return
    u = mannwhitneyu(pos, neg, alternative="two-sided").statistic
    assert binary_auc(y, s) == pytest.approx(u / (len(pos) * len(neg)), abs=1e-6)  # torchmetrics: float32


def test_classification_metrics_three_classes():
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    p = torch.tensor([
        [0.8, 0.1, 0.1],   # N -> N
        [0.6, 0.3, 0.1],   # N -> N
        [0.2, 0.7, 0.1],   # N -> B (false mass)
        [0.1, 0.8, 0.1],   # B -> B
        [0.1, 0.3, 0.6],   # B -> M (false malignant)
        [0.5, 0.4, 0.1],   # B -> N (missed mass)
        [0.1, 0.1, 0.8],   # M -> M
        [0.0, 0.3, 0.7],   # M -> M
        [0.1, 0.6, 0.3],   # M -> B (missed malignancy)
        [0.2, 0.2, 0.6],   # M -> M
    ])
    m = classification_metrics(y, p)
    expected = np.array([[2, 1, 0], [1, 1, 1], [0, 1, 3]])
    np.testing.assert_array_equal(m.confusion, expected)
    assert m.accuracy == pytest.approx(6 / 10)
    # malignant vs rest: 3 of 4 malignant predicted M; of 6 others, 1 predicted M
    assert m.malignant.sensitivity == pytest.approx(3 / 4)
    assert m.malignant.specificity == pytest.approx(5 / 6)
    # mass vs normal: masses predicted as B or M: 6 of 7; normals predicted N: 2 of 3
    assert m.mass.sensitivity == pytest.approx(6 / 7)
    assert m.mass.specificity == pytest.approx(2 / 3)
    # AUCs against the independent Mann-Whitney computation
    pm = p[:, 2].numpy()
    u = mannwhitneyu(pm[y == 2], pm[y != 2]).statistic
    assert m.malignant.auc == pytest.approx(u / (4 * 6))
    pmass = 1 - p[:, 0].numpy()
    u = mannwhitneyu(pmass[y != 0], pmass[y == 0]).statistic
    assert m.mass.auc == pytest.approx(u / (7 * 3))
    d = m.as_dict()
    assert d["accuracy"] == 0.6 and d["malignant_sensitivity"] == 0.75
    assert "| malignant vs rest | 0.750 | 0.833 |" in m.to_markdown()


def test_missing_class_gives_nan_not_an_error():
    y = torch.tensor([1, 2, 1, 2])  # no normal image (like BUS-BRA)
    p = torch.tensor([[0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]])
    m = classification_metrics(y, p)
    assert math.isnan(m.mass.specificity) and math.isnan(m.mass.auc)
    assert m.mass.sensitivity == 1.0
    assert m.malignant.auc == 1.0


def test_bad_inputs_are_refused_with_a_clear_message():
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="probabilities"):
        classification_metrics(y, torch.tensor([[2.0, -1.0, 0.5]] * 3))  # logits
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        classification_metrics(y, torch.rand(3, 2))
    with pytest.raises(ValueError, match="y_true must be in"):
        classification_metrics(torch.tensor([0, 1, 3]), torch.full((3, 3), 1 / 3))
    with pytest.raises(ValueError, match="0/1"):
        binary_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="entries"):
        binary_auc([0, 1, 1], [0.1, 0.2])
