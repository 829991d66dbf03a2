"""Diagnostic metrics for an image classifier: sensitivity, specificity, ROC / AUC and the confusion matrix.

Two binary questions are asked of a 3-class output (0 normal, 1 benign, 2 malignant):

* **malignant vs rest** (the biopsy question), scored by :math:`p_M`;
* **mass vs normal** (the detection question), scored by :math:`1 - p_N = p_B + p_M`.

Sensitivity and specificity are those of the classifier's own decision (the arg-max class, the same decision
the confusion matrix counts); the ROC curve sweeps a threshold over the score. ROC points and AUC come from
:mod:`torchmetrics` (``binary_roc``, ``binary_auroc``), the confusion matrix from
``multiclass_confusion_matrix``. The AUC equals the Mann-Whitney statistic :math:`U / (n_+ n_-)`: the
probability that a random positive scores above a random negative, ties counting one half.

Taught in ``book/11_cnn_diagnosis.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, binary_roc, multiclass_confusion_matrix

from ..data.formats import CLASSES

__all__ = ["BinaryMetrics", "ClassificationMetrics", "binary_roc_curve", "binary_auc", "binary_metrics",
           "classification_metrics"]


def _as_cpu(x, dtype) -> torch.Tensor:
    t = torch.as_tensor(x.detach().cpu() if isinstance(x, torch.Tensor) else np.asarray(x))
    return t.to(dtype)


def _check_binary(y_true, score):
    y = _as_cpu(y_true, torch.int64).reshape(-1)
    s = _as_cpu(score, torch.float64).reshape(-1)
    if y.numel() != s.numel():
        raise ValueError(f"y_true has {y.numel()} entries but score has {s.numel()}")
    if y.numel() and not bool(((y == 0) | (y == 1)).all()):
        raise ValueError(f"binary y_true must be 0/1 (or bool), got values {sorted(set(y.tolist()))}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("score contains NaN or infinite values")
    return y, s


def binary_roc_curve(y_true, score):
    """ROC curve of a binary problem: ``(fpr, tpr, thresholds)`` as numpy arrays (torchmetrics ``binary_roc``).

    Points are sorted by decreasing threshold, starting at (0, 0). Scores outside [0, 1] are passed through a
    sigmoid by torchmetrics first: the curve is unchanged (a monotone map), the thresholds are then on the
    sigmoid scale. With no positive or no negative the curve is undefined: empty arrays.

    Taught in ``book/11_cnn_diagnosis.md``.
    """
    y, s = _check_binary(y_true, score)
    if y.numel() == 0 or int(y.sum()) in (0, y.numel()):
        e = np.zeros(0)
        return e, e.copy(), e.copy()
    fpr, tpr, thr = binary_roc(s, y)
    return fpr.double().numpy(), tpr.double().numpy(), thr.double().numpy()


def binary_auc(y_true, score) -> float:
    """Area under the ROC curve (torchmetrics ``binary_auroc``); ``nan`` when a class is missing.

    Equals :math:`U / (n_+ n_-)` of the Mann-Whitney test (``scipy.stats.mannwhitneyu(pos, neg).statistic``).

    Taught in ``book/11_cnn_diagnosis.md``.
    """
    y, s = _check_binary(y_true, score)
    if y.numel() == 0 or int(y.sum()) in (0, y.numel()):
        return float("nan")
    return float(binary_auroc(s, y))


@dataclass
class BinaryMetrics:
    """One binary question: decision-based sensitivity / specificity and the score's ROC curve and AUC.

    ``nan`` where undefined (no positive: sensitivity, AUC; no negative: specificity, AUC).
    """

    sensitivity: float
    specificity: float
    auc: float
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    n_positive: int
    n_negative: int


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def binary_metrics(y_true, score, predicted=None, threshold: float = 0.5) -> BinaryMetrics:
    """Sensitivity, specificity, ROC curve and AUC of a binary problem.

    Parameters
    ----------
    y_true : 0/1 or bool [N], 1 = positive (diseased).
    score : float [N], higher = more likely positive.
    predicted : bool [N], the decision; default ``score >= threshold``.
    threshold : used when ``predicted`` is not given.

    sensitivity = TP / (TP + FN), specificity = TN / (TN + FP).

    Taught in ``book/11_cnn_diagnosis.md``.
    """
    y, s = _check_binary(y_true, score)
    pred = (s >= threshold) if predicted is None else _as_cpu(predicted, torch.bool).reshape(-1)
    if pred.numel() != y.numel():
        raise ValueError(f"predicted has {pred.numel()} entries but y_true has {y.numel()}")
    pos, neg = y == 1, y == 0
    tp, tn = int((pred & pos).sum()), int((~pred & neg).sum())
    fpr, tpr, thr = binary_roc_curve(y, s)
    return BinaryMetrics(sensitivity=_ratio(tp, int(pos.sum())), specificity=_ratio(tn, int(neg.sum())),
                         auc=binary_auc(y, s), fpr=fpr, tpr=tpr, thresholds=thr,
                         n_positive=int(pos.sum()), n_negative=int(neg.sum()))


@dataclass
class ClassificationMetrics:
    """What :func:`classification_metrics` returns.

    Attributes
    ----------
    malignant : :class:`BinaryMetrics` of malignant vs rest (score ``p_M``).
    mass : :class:`BinaryMetrics` of mass (benign or malignant) vs normal (score ``1 - p_N``).
    confusion : int [3, 3], rows = true class, columns = predicted (arg-max) class, order normal, benign, malignant.
    accuracy : fraction of arg-max predictions that are right.
    """

    malignant: BinaryMetrics
    mass: BinaryMetrics
    confusion: np.ndarray
    accuracy: float

    def as_dict(self, digits: int = 3) -> dict:
        """The scalar numbers, rounded (for printing in notebooks and tables)."""
        out = {"accuracy": round(self.accuracy, digits)}
        for name in ("malignant", "mass"):
            m = getattr(self, name)
            for k in ("sensitivity", "specificity", "auc"):
                out[f"{name}_{k}"] = round(getattr(m, k), digits)
        return out

    def to_markdown(self, digits: int = 3) -> str:
        """A small Markdown table: one row per binary question."""
        rows = ["| question | sensitivity | specificity | AUC | positives | negatives |",
                "|---|---|---|---|---|---|"]
        for label, m in (("malignant vs rest", self.malignant), ("mass vs normal", self.mass)):
            rows.append(f"| {label} | {m.sensitivity:.{digits}f} | {m.specificity:.{digits}f} | {m.auc:.{digits}f} "
                        f"| {m.n_positive} | {m.n_negative} |")
        return "\n".join(rows)


def classification_metrics(y_true, scores) -> ClassificationMetrics:
    """Sensitivity, specificity, ROC/AUC (malignant vs rest, mass vs normal) and the confusion matrix.

    Parameters
    ----------
    y_true : int [N] in {0 normal, 1 benign, 2 malignant}.
    scores : float [N, 3] class probabilities (softmax output, rows sum to 1), e.g. from
        :func:`wsbus.companion.predict_scores`. Logits are refused: ``1 - p_N`` needs probabilities.

    Returns
    -------
    ClassificationMetrics
        Sensitivity and specificity use the arg-max decision (``predicted == 2`` for malignant,
        ``predicted != 0`` for mass); the ROC curves and AUCs use the scores ``p_M`` and ``1 - p_N``.

    Taught in ``book/11_cnn_diagnosis.md``.
    """
    y = _as_cpu(y_true, torch.int64).reshape(-1)
    p = _as_cpu(scores, torch.float64)
    if p.ndim != 2 or p.shape[1] != len(CLASSES) or p.shape[0] != y.numel():
        raise ValueError(f"scores must be [N, 3] with N = {y.numel()} labels, got shape {tuple(p.shape)}")
    if y.numel() == 0:
        raise ValueError("classification_metrics: no samples")
    if not bool(((y >= 0) & (y < len(CLASSES))).all()):
        raise ValueError(f"y_true must be in {{0, 1, 2}}, got values {sorted(set(y.tolist()))}")
    if not bool(torch.isfinite(p).all()) or float(p.min()) < 0 or float(p.max()) > 1 \
            or not torch.allclose(p.sum(1), torch.ones(len(p), dtype=p.dtype), atol=1e-3):
        raise ValueError("scores must be class probabilities in [0, 1] summing to 1 per row (apply softmax to "
                         "logits first)")
    pred = p.argmax(dim=1)
    cm = multiclass_confusion_matrix(pred, y, num_classes=len(CLASSES)).numpy().astype(np.int64)
    return ClassificationMetrics(
        malignant=binary_metrics(y == 2, p[:, 2], predicted=pred == 2),
        mass=binary_metrics(y != 0, 1.0 - p[:, 0], predicted=pred != 0),
        confusion=cm, accuracy=float(np.trace(cm)) / float(cm.sum()))
