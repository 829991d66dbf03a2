"""Average precision by the COCO protocol: AP50 and AP@[.5:.95] per class and their mean, equal to ``COCOeval``.

The numbers are pycocotools' own: :class:`torchmetrics.detection.MeanAveragePrecision` with the pycocotools
backend runs ``COCOeval`` (``evaluate``, ``accumulate``), and the per-class APs are read from its accumulated
precision array in float64, averaged exactly as ``COCOeval.summarize`` averages them. Two details make that
exact:

- **The thresholds are pycocotools' own float64 values** (:data:`COCO_IOU_THRESHOLDS`,
  :data:`COCO_RECALL_THRESHOLDS`). torchmetrics' defaults are built with ``torch.linspace`` in float32, so 0.07
  becomes 0.0700000003 and 0.6 becomes 0.6000000238: a recall (or an IoU) that equals a threshold exactly then
  falls to the next point, and AP moves by up to 1/101 per such point (``docs/decisions.md``; the minimal case:
  one mass, one detection with IoU exactly 0.6, gives AP@[.5:.95] 0.3 by ``COCOeval`` and 0.2 by torchmetrics'
  defaults).
- **The per-class values come from the float64 precision array** (torchmetrics' ``extended_summary``), not from
  its float32 ``map_per_class``, so they agree with ``COCOeval`` to the last bits, not to 1e-7.

Box convention: COCO's, continuous coordinates, width ``x2 - x1`` (no ``+ 1``), the same as wsbus's pixel-edge
boxes. A detection matches a ground-truth box of its class when IoU >= t (COCO's ``>=``; CorLoc's is ``>``),
greedily by score, each box matched at most once (a duplicate is a false positive). Every test image takes part:
detections on a normal image (no ground truth) are false positives of their class; an image with neither boxes nor
detections changes nothing. Detections with labels other than 1 and 2 are ignored.

Taught in ``book/08_evaluation.md``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.formats import CLASSES
from .inputs import MASS_CLASSES, Pred, Target, Truth, check_iou_thresh, parse_pair

COCO_IOU_THRESHOLDS: Tuple[float, ...] = tuple(np.linspace(0.5, 0.95, 10).tolist())
"""The IoU thresholds 0.50, 0.55, ..., 0.95 of AP@[.5:.95], in float64 exactly as ``pycocotools.cocoeval.Params``
builds them (``np.linspace(.5, 0.95, 10)``; the ninth is 0.8999999999999999)."""

COCO_RECALL_THRESHOLDS: Tuple[float, ...] = tuple(np.linspace(0.0, 1.0, 101).tolist())
"""The 101 recall points 0.00, 0.01, ..., 1.00 where precision is sampled, in float64 as pycocotools builds them."""

MAX_DETECTIONS: int = 100
"""COCO's limit on detections per image and class (the highest scores are kept)."""


def _check_max_detections(max_detections: Any) -> int:
    if isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 10:
        raise ValueError(f"max_detections must be an integer >= 10, got {max_detections!r}")
    return max_detections


def coco_precision(preds: Sequence[Pred], truths: Sequence[Truth], iou_thresholds: Sequence[float],
                   max_detections: int = MAX_DETECTIONS) -> Tuple[Optional[np.ndarray], List[int]]:
    """``COCOeval``'s accumulated precision, float64 [T, R, K] (area "all", ``maxDets = max_detections``).

    T: ``iou_thresholds``, R: :data:`COCO_RECALL_THRESHOLDS`, K: the class ids returned beside it (sorted; those
    of classes 1 and 2 that occur in the detections or the ground truth). Entries are -1 for a class without
    ground-truth boxes, as in pycocotools. ``(None, [])`` when there is no image.
    """
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=[float(t) for t in iou_thresholds],
                                  rec_thresholds=list(COCO_RECALL_THRESHOLDS),
                                  max_detection_thresholds=[1, 10, max_detections], class_metrics=False,
                                  extended_summary=True, backend="pycocotools")
    metric.warn_on_many_detections = False
    mass = torch.tensor(MASS_CLASSES)
    dets, gts = [], []
    # pycocotools runs on the CPU in float64: boxes and scores go there as float64, so that the widths (x2 - x1)
    # and the score order are those COCOeval would compute from the same numbers.
    for p, t in zip(preds, truths):
        keep = torch.isin(p.labels.cpu(), mass)
        dets.append(dict(boxes=p.boxes.cpu()[keep].double(), labels=p.labels.cpu()[keep],
                         scores=p.scores.cpu()[keep].double()))
        gts.append(dict(boxes=t.boxes.cpu().double(), labels=t.labels.cpu()))
    if not dets:
        return None, []
    metric.update(dets, gts)
    res = metric.compute()
    if "precision" not in res:  # torchmetrics skips COCOeval when there is no image
        return None, []
    precision = res["precision"].numpy().astype(np.float64, copy=False)
    return precision[:, :, :, 0, -1], [int(c) for c in res["classes"].reshape(-1).tolist()]


def _class_aps(precision: Optional[np.ndarray], classes: List[int], iou_index: Any) -> Dict[str, float]:
    """Per-class AP (mean of the valid precision entries over the chosen IoU thresholds and 101 recall points, as
    ``COCOeval.summarize``) and mAP, the mean over the classes that have ground-truth boxes."""
    out: Dict[str, float] = {}
    for c in MASS_CLASSES:
        ap = math.nan
        if precision is not None and c in classes:
            s = precision[iou_index, :, classes.index(c)]
            s = s[s > -1]
            ap = float(np.mean(s)) if s.size else math.nan
        out[CLASSES[c]] = ap
    vals = [out[CLASSES[c]] for c in MASS_CLASSES if not math.isnan(out[CLASSES[c]])]
    out["mAP"] = float(np.mean(vals)) if vals else math.nan
    return out


def coco_ap(detections: Sequence[Mapping[str, Any]], ground_truth: Sequence[Target],
            max_detections: int = MAX_DETECTIONS) -> Dict[str, Dict[str, float]]:
    """AP50 and AP@[.5:.95] per class and their mean, by the COCO protocol (equal to pycocotools' ``COCOeval``).

    AP is the area under a class's precision-recall curve, its detections ranked by score over all test images;
    it uses every detection (no score threshold, unlike CorLoc). ``COCOeval`` samples the interpolated precision
    at 101 recall points (:data:`COCO_RECALL_THRESHOLDS`); AP50 matches at IoU >= 0.5, AP@[.5:.95] averages over
    the ten thresholds :data:`COCO_IOU_THRESHOLDS`. See the module docstring for the matching, the box convention,
    normal images and why the thresholds are float64.

    Returns
    -------
    dict
        ``{"ap50": {"benign", "malignant", "mAP"}, "ap": {"benign", "malignant", "mAP"}}``; a class without
        ground-truth boxes has AP ``nan``; ``mAP`` is the mean over the classes that have them (``nan`` if none).
        With both classes present, ``mAP`` is ``COCOeval``'s ``stats[1]`` (AP50) and ``stats[0]`` (AP).

    Taught in ``book/08_evaluation.md``.
    """
    max_detections = _check_max_detections(max_detections)
    preds, truths = parse_pair(detections, ground_truth)
    precision, classes = coco_precision(preds, truths, COCO_IOU_THRESHOLDS, max_detections)
    return {"ap50": _class_aps(precision, classes, 0), "ap": _class_aps(precision, classes, slice(None))}


def average_precision(detections: Sequence[Mapping[str, Any]], ground_truth: Sequence[Target],
                      iou_thresh: float = 0.5, max_detections: int = MAX_DETECTIONS) -> Dict[str, float]:
    """Per-class average precision and mAP at one IoU threshold, by the COCO protocol (:func:`coco_ap`).

    Computed as :func:`coco_ap` with the single IoU threshold ``iou_thresh`` (in (0, 1)): greedy matching by score,
    a detection matches when IoU >= ``iou_thresh``, precision interpolated at 101 recall points, at most
    ``max_detections`` detections per image and class. ``average_precision(d, g)`` equals ``coco_ap(d, g)["ap50"]``.
    (The reference code uses the VOC07 11-point AP with IoU > 0.5 and +1-pixel widths; the numbers differ slightly.)

    Returns
    -------
    dict
        ``{"benign": AP_1, "malignant": AP_2, "mAP": mean}``; a class without ground-truth boxes has AP ``nan``
        and ``mAP`` is the mean over the classes that have them (``nan`` if none).

    Taught in ``book/08_evaluation.md``.
    """
    iou_thresh = check_iou_thresh(iou_thresh)
    max_detections = _check_max_detections(max_detections)
    preds, truths = parse_pair(detections, ground_truth)
    precision, classes = coco_precision(preds, truths, [iou_thresh], max_detections)
    return _class_aps(precision, classes, 0)
