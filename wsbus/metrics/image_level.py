"""Image-level metrics: the detector read as an image classifier (AUC) or screener (sensitivity / specificity).

An image's score for a class is the highest score of its detections of that class (0 when it has none). These
metrics do not look at where a detection is (CorLoc and AP do).

Taught in ``book/08_evaluation.md``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Literal, Mapping, Sequence

import numpy as np
import torch
from scipy import stats

from .corloc import CORLOC_SCORE_THRESH
from .inputs import MASS_CLASSES, Target, check_score_thresh, parse_detections, parse_pair


def image_scores(detections: Sequence[Mapping[str, Any]],
                 classes: Sequence[int] = MASS_CLASSES) -> np.ndarray:
    """Maximum detection score of each class in each image.

    Returns
    -------
    numpy.ndarray
        float64 [N, len(classes)]; column j is the highest score of a detection labelled ``classes[j]``
        (0 when the image has none). With the default classes: column 0 benign, column 1 malignant.
    """
    preds = parse_detections(detections)
    classes = [int(c) for c in classes]
    out = np.zeros((len(preds), len(classes)), dtype=np.float64)
    for i, p in enumerate(preds):
        for j, c in enumerate(classes):
            s = p.scores[p.labels == c]
            if s.numel():
                out[i, j] = float(s.max())
    return out


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + P(tie) / 2 = U / (n_pos n_neg) (Mann-Whitney)."""
    if pos.size == 0 or neg.size == 0:
        return math.nan
    u = stats.mannwhitneyu(pos, neg, alternative="two-sided", method="asymptotic").statistic
    return float(u) / (pos.size * neg.size)


def image_auc(detections: Sequence[Mapping[str, Any]], ground_truth: Sequence[Target]) -> Dict[str, float]:
    """Image-level ROC AUC from the detector's maximum class scores.

    - ``normal_vs_mass``: positives are images with a mass, negatives normal images; an image's score is the
      highest score of any benign or malignant detection (0 when it has none).
    - ``benign_vs_malignant``, the **malignancy AUC** (``auc`` in ``results.json``): among the images with a mass,
      positives are the malignant images (a mixed image is malignant, as its ``image_label``), negatives the
      benign ones; an image's score is its highest *malignant* detection score (0 when it has none). Normal images
      take no part: they are neither benign nor malignant masses (their false alarms are counted by
      ``normal_vs_mass``, :func:`false_positives_per_normal_image` and the FROC).

    AUC is the Mann-Whitney statistic U / (n_pos n_neg) (:func:`scipy.stats.mannwhitneyu`): the probability that a
    random positive image outranks a random negative one, ties counting one half (two images without a malignant
    detection tie at 0). It equals the trapezoidal area under the ROC curve. ``nan`` when a group is empty.

    Returns
    -------
    dict
        ``normal_vs_mass``, ``benign_vs_malignant`` (floats) and the group sizes ``n_normal``, ``n_benign``,
        ``n_malignant``.

    Taught in ``book/08_evaluation.md``.
    """
    preds, truths = parse_pair(detections, ground_truth)
    scores = image_scores([{"boxes": p.boxes, "labels": p.labels, "scores": p.scores} for p in preds])
    y = np.array([t.image_label for t in truths], dtype=np.int64)
    mass = scores.max(axis=1)
    malignant = scores[:, MASS_CLASSES.index(2)]
    return {"normal_vs_mass": _auc(mass[y > 0], mass[y == 0]),
            "benign_vs_malignant": _auc(malignant[y == 2], malignant[y == 1]),
            "n_normal": int(np.sum(y == 0)), "n_benign": int(np.sum(y == 1)), "n_malignant": int(np.sum(y == 2))}


def sensitivity_specificity(detections: Sequence[Mapping[str, Any]], ground_truth: Sequence[Target],
                            score_thresh: float = CORLOC_SCORE_THRESH,
                            positive: Literal["mass", "malignant"] = "mass") -> Dict[str, float]:
    """Image-level sensitivity and specificity when an image is called positive at a score threshold.

    - ``positive="mass"``: an image is called positive when it has a benign or malignant detection with
      ``score >= score_thresh``; the truly positive images are those with a mass (benign or malignant), the
      negatives the normal images.
    - ``positive="malignant"``: called positive when it has a malignant detection with ``score >= score_thresh``;
      the positives are the malignant images, the negatives the benign and normal ones.

    This is image-level screening: a positive call does not have to be at the right place (CorLoc checks that).

    Returns
    -------
    dict
        ``sensitivity = tp / (tp + fn)``, ``specificity = tn / (tn + fp)`` (``nan`` for an empty group) and
        the counts ``tp``, ``fn``, ``tn``, ``fp``.

    Taught in ``book/08_evaluation.md``.
    """
    score_thresh = check_score_thresh(score_thresh)
    if positive not in ("mass", "malignant"):
        raise ValueError(f"positive must be 'mass' or 'malignant', got {positive!r}")
    preds, truths = parse_pair(detections, ground_truth)
    classes = MASS_CLASSES if positive == "mass" else (2,)
    called = np.array([bool((torch.isin(p.labels, torch.tensor(classes, device=p.labels.device))
                             & (p.scores >= score_thresh)).any()) for p in preds], dtype=bool)
    truth = np.array([t.image_label in classes for t in truths], dtype=bool)
    tp, fn = int(np.sum(called & truth)), int(np.sum(~called & truth))
    tn, fp = int(np.sum(~called & ~truth)), int(np.sum(called & ~truth))
    return {"sensitivity": tp / (tp + fn) if tp + fn else math.nan,
            "specificity": tn / (tn + fp) if tn + fp else math.nan,
            "tp": tp, "fn": fn, "tn": tn, "fp": fp}


def false_positives_per_normal_image(detections: Sequence[Mapping[str, Any]], ground_truth: Sequence[Target],
                                     score_thresh: float = CORLOC_SCORE_THRESH) -> float:
    """Mean number of benign or malignant detections with ``score >= score_thresh`` on a normal image.

    Every such detection is a false positive, since a normal image has no mass (the reference code's count on its
    normal test set). ``nan`` when there is no normal image.

    Taught in ``book/08_evaluation.md``.
    """
    score_thresh = check_score_thresh(score_thresh)
    preds, truths = parse_pair(detections, ground_truth)
    counts = [int(((p.labels >= 1) & (p.labels <= 2) & (p.scores >= score_thresh)).sum())
              for p, t in zip(preds, truths) if t.image_label == 0]
    return float(np.mean(counts)) if counts else math.nan


