"""FROC: sensitivity against false positives per image, and its CPM score.

Two curves, two countings, each for what it is good for:

- :func:`froc` -- the curve of the paper's reference code (its ``voc_eval_bus``): per class, *images* whose mass
  is found, at 21 score thresholds, false positives divided by the images *of that class*; overall = the mean
  of the class curves. It reproduces the authors' figures.
- :func:`froc_cpm` -- the lesion-level FROC of LUNA16 and nnDetection and its **CPM** (competition performance
  metric): *masses* found over all masses, false positives per image over *all* test images (normal ones
  included), every score a threshold, the sensitivity linearly interpolated at 1/8, 1/4, 1/2, 1, 2, 4 and 8
  false positives per image, and the CPM their mean. It is the number the literature reports
  (``froc_cpm`` in ``results.json``).

Both count a detection of class c as a hit when its IoU with a ground-truth box *of class c* is > ``iou_thresh``
(0.5, strictly, as CorLoc), and as a false positive otherwise; a second hit on an already-found mass is neither
(LUNA16 and the reference code alike).

Taught in ``book/08_evaluation.md``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.formats import CLASSES
from .inputs import MASS_CLASSES, Target, check_iou_thresh, pairwise_iou, parse_pair


REFERENCE_FROC_THRESHOLDS: Tuple[float, ...] = tuple(k / 20 for k in range(20, -1, -1))
"""The reference's FROC score thresholds 1.0, 0.95, ..., 0.05, 0.0 (``np.arange(1.0, -0.01, -0.05)`` there)."""

FROC_FP_RATES: Tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""The FROC summary points, false positives per image: 1/8, 1/4, 1/2, 1, 2, 4, 8 (LUNA16's and nnDetection's);
the CPM (:func:`froc_cpm`) is the mean sensitivity at them."""

_FROC_KEYS = ("benign", "malignant", "overall")


@dataclass(frozen=True, eq=False, repr=False)
class FROCResult:
    """Result of :func:`froc`: one curve point per score threshold, per class and overall.

    Attributes
    ----------
    thresholds : numpy.ndarray of float64 [T]
        The score thresholds, from high to low; a detection counts at threshold t when ``score >= t``.
    sensitivity : dict str -> numpy.ndarray [T]
        ``"benign"``, ``"malignant"``: per-class CorLoc at each threshold, ``detected / n_images[class]``;
        ``"overall"``: the mean of the two class curves (the reference's "all" curve). ``nan`` for a class
        without images.
    fp_per_image : dict str -> numpy.ndarray [T]
        ``"benign"``, ``"malignant"``: ``false_positives / n_images[class]`` (the reference's normalisation,
        by the images *having a mass of that class*); ``"overall"``: the mean of the two.
    detected : dict str -> numpy.ndarray of int [T]
        Per class, images of that class whose mass is found (the reference's ``nok``).
    false_positives : dict str -> numpy.ndarray of int [T]
        Per class, false-positive detections of that class in all images (the reference's ``num_all_fps``).
    n_images : dict str -> int
        ``"benign"``, ``"malignant"`` (images with a ground-truth box of that class, the reference's ``ni``),
        ``"normal"`` (images without any box) and ``"total"``.
    iou_thresh, voc_plus_one :
        The settings used.

    The raw counts allow other normalisations, e.g. false positives per image over the whole test set:
    ``(r.false_positives["benign"] + r.false_positives["malignant"]) / r.n_images["total"]``.
    """

    thresholds: np.ndarray
    sensitivity: Dict[str, np.ndarray]
    fp_per_image: Dict[str, np.ndarray]
    detected: Dict[str, np.ndarray]
    false_positives: Dict[str, np.ndarray]
    n_images: Dict[str, int]
    iou_thresh: float
    voc_plus_one: bool

    def _key(self, which: str) -> str:
        if which not in _FROC_KEYS:
            raise KeyError(f"{which!r}; FROC curves are 'overall', 'benign' and 'malignant'")
        return which

    def sensitivity_at(self, fp_rates: Sequence[float] = FROC_FP_RATES, which: str = "overall") -> np.ndarray:
        """Sensitivity of curve ``which`` at given false-positive rates (per image).

        For each rate r: the highest sensitivity among the thresholds whose ``fp_per_image <= r`` (the curve
        as a step function, no interpolation between thresholds), 0 when no threshold is that strict (a
        threshold above every score has sensitivity 0 and no false positive). ``nan`` for a class without
        images. The reference code reports the curve points only (``froc_curve_pts``), not such a summary.
        This is *not* the CPM of LUNA16 / nnDetection, which counts masses (not images), divides false positives
        by all test images and interpolates: that is :func:`froc_cpm`.

        Returns
        -------
        numpy.ndarray of float64, one value per rate.
        """
        key = self._key(which)
        rates = np.asarray(fp_rates, dtype=np.float64).reshape(-1)
        if rates.size == 0 or not np.all(np.isfinite(rates)) or np.any(rates < 0):
            raise ValueError(f"fp_rates must be finite, non-negative numbers, got {list(fp_rates)!r}")
        sens, fp = self.sensitivity[key], self.fp_per_image[key]
        if np.all(np.isnan(sens)):
            return np.full(rates.shape, math.nan)
        return np.array([float(np.max(sens[fp <= r], initial=0.0)) for r in rates])

    def as_dict(self) -> Dict[str, Any]:
        """JSON-friendly data: lists of floats (``None`` for ``nan``) and ints, and the settings."""
        def floats(a: np.ndarray) -> List[Optional[float]]:
            return [None if math.isnan(x) else float(x) for x in a.tolist()]
        return {"thresholds": [float(t) for t in self.thresholds],
                "sensitivity": {k: floats(v) for k, v in self.sensitivity.items()},
                "fp_per_image": {k: floats(v) for k, v in self.fp_per_image.items()},
                "detected": {k: [int(x) for x in v] for k, v in self.detected.items()},
                "false_positives": {k: [int(x) for x in v] for k, v in self.false_positives.items()},
                "n_images": dict(self.n_images), "iou_thresh": self.iou_thresh, "voc_plus_one": self.voc_plus_one}

    def __repr__(self) -> str:
        n = self.n_images
        return (f"FROCResult({len(self.thresholds)} thresholds {self.thresholds[0]:g}..{self.thresholds[-1]:g}; "
                f"benign n={n['benign']}, malignant n={n['malignant']}, normal n={n['normal']}; "
                f"IoU > {self.iou_thresh:g}{', VOC +1' if self.voc_plus_one else ''})")


def _froc_thresholds(thresholds: Optional[Sequence[float]]) -> np.ndarray:
    if thresholds is None:
        return np.array(REFERENCE_FROC_THRESHOLDS, dtype=np.float64)
    if isinstance(thresholds, (str, bytes)):
        raise TypeError(f"thresholds must be a sequence of numbers, got {thresholds!r}")
    try:
        t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"thresholds must be a sequence of numbers, got {thresholds!r}") from None
    if t.size == 0:
        raise ValueError("thresholds is empty; give at least one score threshold (or None for the reference's)")
    if not np.all(np.isfinite(t)) or np.any((t < 0) | (t > 1)):
        raise ValueError(f"thresholds must lie in [0, 1], got {t.tolist()}")
    return np.unique(t)[::-1].copy()


def froc(detections: Sequence[Mapping[str, Any]], ground_truth: Sequence[Target],
         thresholds: Optional[Sequence[float]] = None, iou_thresh: float = 0.5,
         voc_plus_one: bool = False) -> FROCResult:
    """FROC curves: sensitivity (CorLoc) against false positives per image, per class and overall.

    Counted as the reference code's ``voc_eval_bus`` counts them (``code/lib/datasets/voc_eval_bus.py`` of the
    authors' repository), one call there per class and threshold, and normalised and averaged as its caller
    ``bus._do_python_eval`` (``code/lib/datasets/bus.py``) does. For each class c (1 benign, 2 malignant) and
    each threshold t, with only the detections of class c with ``score >= t``:

    - **detected** (the reference's ``nok``): images having a ground-truth box of class c in which some such
      detection has IoU > ``iou_thresh`` with a ground-truth box of class c -- exactly :func:`corloc`'s
      per-class outcome at ``score_thresh = t``;
    - **false positives** (``num_all_fps``, summed from ``fp_froc``): such detections whose best IoU with the
      ground-truth boxes *of class c in their image* is ``<= iou_thresh``, in every image. So a detection in a
      normal image, or a benign detection on a malignant mass, is a false positive, while a second detection of
      an already-found mass (a duplicate) is **not** (``fp_froc`` looks at the overlap only, not at the
      ``R['det']`` flags that make duplicates false positives for AP); a duplicate adds nothing to
      sensitivity either;
    - **sensitivity** ``= detected / n_c`` and **fp_per_image** ``= false_positives / n_c``, where ``n_c`` is
      the number of images with a ground-truth box of class c (``ni``): both are divided by the images *of
      that class*, as the reference does, not by all test images (normal images add false positives but
      no images to ``n_c``);
    - the **overall** curve is the point-wise mean of the two class curves, as the reference's "all" curve
      (``curve_pts[0]``), not a pooled count.

    The lines of ``voc_eval_bus`` followed are ``inds2 = np.argwhere(sorted_scores <= -score_thresh)`` and
    ``if ovmax > ovthresh: bok=True`` (detected), and ``if sorted_scores[d] <= -score_thresh: if ovmax <=
    ovthresh: fp_froc[d] = 1.`` (false positives); those of ``bus.py`` are ``arr_score_thresh = np.arange(1.0,
    -0.01, -0.05)``, ``curve_pts[i].append((np.float(num_all_fps)/ni,np.float(nok)/ni))`` and the mean of the
    benign and malignant points for ``curve_pts[0]``. The reference runs its FROC on the test images with a
    mass (normal test images are a separate run that only counts false positives); pass those to reproduce it.

    Deviations, and why:

    - IoU: ``voc_plus_one=False`` (the default, as in :func:`corloc`) uses torchvision's ``box_iou`` on wsbus's
      pixel-edge boxes (``x2`` = last pixel + 1), which is the quantity the reference computes with its ``+ 1.``
      on inclusive VOC pixel indices; ``voc_plus_one=True`` applies the ``+ 1`` to the boxes as given, as the
      reference does to its own.
    - Thresholds: the default is exactly ``k / 20``, k = 20 ... 0; the reference's ``np.arange`` values lie up to
      1e-15 below these, which changes nothing for its scores, written with three decimals. Scores are compared
      in their own dtype (``scores >= t`` in torch, as :func:`corloc` does); the reference first rounds them to
      three decimals in its results file (``'{:.3f}'``): round them before calling to reproduce that.
    - A class without images gives ``nan`` for its curve (the reference divides by zero) and the overall curve
      is then the other class's; a class without any detection gives sensitivity 0 and no false positive (the
      reference skips the counting then, and its ``return`` fails on the undefined ``ni``, ``nok``,
      ``num_all_fps``). Detections with labels other than 1 and 2 are ignored, as in :func:`corloc`. wsbus has
      no "difficult" flag; the reference's FROC and CorLoc counts do not read it either (only its AP does).

    Parameters
    ----------
    detections : list of dict(boxes [D, 4], labels [D], scores [D])
        One dict per test image, torchvision's output format; any device.
    ground_truth : list of dict(boxes [K, 4], labels [K]) or :class:`wsbus.data.Sample`
        Same images, same order; K = 0 for a normal image.
    thresholds : sequence of float in [0, 1], optional
        Score thresholds (sorted from high to low, duplicates dropped); default
        :data:`REFERENCE_FROC_THRESHOLDS` (1.0, 0.95, ..., 0.0).
    iou_thresh : float
        A detection hits a mass when IoU > ``iou_thresh`` (strictly), and is a false positive otherwise.
    voc_plus_one : bool
        The reference's ``+ 1`` pixel convention for the IoU (see above).

    Returns
    -------
    FROCResult
        ``.thresholds``, ``.sensitivity[key]``, ``.fp_per_image[key]`` for key ``"benign"``, ``"malignant"``,
        ``"overall"``, the counts behind them, ``.n_images``, ``.sensitivity_at(rates)`` and ``.as_dict()``.

    Taught in ``book/08_evaluation.md``.
    """
    iou_thresh = check_iou_thresh(iou_thresh)
    thr = _froc_thresholds(thresholds)
    preds, truths = parse_pair(detections, ground_truth)
    n_t = thr.size
    detected = {c: np.zeros(n_t, dtype=np.int64) for c in MASS_CLASSES}
    false_pos = {c: np.zeros(n_t, dtype=np.int64) for c in MASS_CLASSES}
    n_class = {c: 0 for c in MASS_CLASSES}
    for p, t in zip(preds, truths):
        boxes, labels, scores = p.boxes.cpu(), p.labels.cpu(), p.scores.cpu()
        gt_boxes, gt_labels = t.boxes.cpu(), t.labels.cpu()
        # torch compares a tensor with a Python float in the tensor's dtype: cast the thresholds the same way
        thr_t = torch.as_tensor(thr, dtype=scores.dtype)
        for c in MASS_CLASSES:
            gt = gt_boxes[gt_labels == c]
            if gt.shape[0]:
                n_class[c] += 1
            own = labels == c
            if not bool(own.any()):
                continue
            det, s = boxes[own], scores[own]
            if gt.shape[0]:
                hit = pairwise_iou(det, gt, voc_plus_one).max(dim=1).values > iou_thresh   # ovmax > ovthresh
            else:
                hit = torch.zeros(det.shape[0], dtype=torch.bool)                   # ovmax = -inf
            counted = s[:, None] >= thr_t[None, :]                                  # [D, T]: score >= t
            false_pos[c] += (counted & ~hit[:, None]).sum(dim=0).numpy()
            if gt.shape[0]:
                detected[c] += (counted & hit[:, None]).any(dim=0).numpy()
    names = {c: CLASSES[c] for c in MASS_CLASSES}
    sensitivity: Dict[str, np.ndarray] = {}
    fp_per_image: Dict[str, np.ndarray] = {}
    for c in MASS_CLASSES:
        n = n_class[c]
        sensitivity[names[c]] = detected[c] / n if n else np.full(n_t, math.nan)
        fp_per_image[names[c]] = false_pos[c] / n if n else np.full(n_t, math.nan)
    present = [names[c] for c in MASS_CLASSES if n_class[c]]
    for out in (sensitivity, fp_per_image):
        out["overall"] = (np.mean([out[k] for k in present], axis=0) if present else np.full(n_t, math.nan))
    n_normal = sum(1 for t in truths if t.labels.numel() == 0)
    return FROCResult(
        thresholds=thr, sensitivity=sensitivity, fp_per_image=fp_per_image,
        detected={names[c]: detected[c] for c in MASS_CLASSES},
        false_positives={names[c]: false_pos[c] for c in MASS_CLASSES},
        n_images={names[1]: n_class[1], names[2]: n_class[2], "normal": n_normal, "total": len(truths)},
        iou_thresh=iou_thresh, voc_plus_one=bool(voc_plus_one))


# --------------------------------------------------------------------------------------------------------------
# Lesion-level FROC and its CPM score, as LUNA16 and nnDetection compute them
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, repr=False)
class CPMResult:
    """Result of :func:`froc_cpm`: the lesion-level FROC curve and its CPM score.

    Attributes
    ----------
    thresholds : numpy.ndarray of float64 [P]
        Score thresholds from high to low: ``inf`` (nothing kept), then every distinct score that changes the
        counts. A detection counts at threshold t when ``score >= t``.
    sensitivity : numpy.ndarray [P]
        Masses found / ``n_masses`` at each threshold (``nan`` when there is no mass).
    fp_per_image : numpy.ndarray [P]
        False positives / ``n_images`` at each threshold.
    fp_rates, sensitivity_at_rates : numpy.ndarray [R]
        The false-positive rates (default :data:`FROC_FP_RATES`) and the interpolated sensitivity at each.
    cpm : float
        The mean of ``sensitivity_at_rates`` (``nan`` when there is no mass).
    n_masses, n_images : int
        Ground-truth boxes of ``classes`` and test images (normal ones included).
    classes : tuple of int
        The classes counted (default both: 1 benign, 2 malignant).
    iou_thresh : float
        A hit needs IoU > ``iou_thresh``.

    Taught in ``book/08_evaluation.md``.
    """

    thresholds: np.ndarray
    sensitivity: np.ndarray
    fp_per_image: np.ndarray
    fp_rates: np.ndarray
    sensitivity_at_rates: np.ndarray
    cpm: float
    n_masses: int
    n_images: int
    classes: Tuple[int, ...]
    iou_thresh: float

    def as_dict(self) -> Dict[str, Any]:
        """JSON-friendly: ``cpm``, ``fp_rates``, ``sensitivity_at_rates``, the curve (``thresholds`` with ``inf``
        written as ``None``), the counts and settings; ``nan`` as ``None``."""
        def floats(a: np.ndarray) -> List[Optional[float]]:
            return [None if not math.isfinite(x) else float(x) for x in np.asarray(a, dtype=np.float64).tolist()]
        return {"cpm": None if math.isnan(self.cpm) else float(self.cpm), "fp_rates": floats(self.fp_rates),
                "sensitivity_at_rates": floats(self.sensitivity_at_rates), "thresholds": floats(self.thresholds),
                "sensitivity": floats(self.sensitivity), "fp_per_image": floats(self.fp_per_image),
                "n_masses": self.n_masses, "n_images": self.n_images, "classes": list(self.classes),
                "iou_thresh": self.iou_thresh}

    def __repr__(self) -> str:
        cpm = "nan" if math.isnan(self.cpm) else f"{100 * self.cpm:.2f}%"
        return (f"CPMResult(cpm={cpm}; {self.n_masses} masses, {self.n_images} images, "
                f"{len(self.thresholds)} curve points; IoU > {self.iou_thresh:g})")


def _check_rates(fp_rates: Sequence[float]) -> np.ndarray:
    try:
        rates = np.asarray(fp_rates, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"fp_rates must be finite, non-negative numbers, got {fp_rates!r}") from None
    if rates.size == 0 or not np.all(np.isfinite(rates)) or np.any(rates < 0):
        raise ValueError(f"fp_rates must be finite, non-negative numbers, got {rates.tolist()!r}")
    return rates


def interpolate_froc(fp_per_image: np.ndarray, sensitivity: np.ndarray, fp_rates: Sequence[float]) -> np.ndarray:
    """Sensitivity of a FROC curve at false-positive rates, by linear interpolation (LUNA16, nnDetection).

    The curve is a staircase: as the threshold falls, the false-positive count stays put while sensitivity climbs
    (vertical runs) or grows while sensitivity stays put. At a rate equal to a point of the curve the value is the
    highest sensitivity reached with that many false positives (the top of its run); between two distinct rates
    a < r < b it is the straight line from the top of a's run to the bottom of b's (the sensitivity when the
    false positives first reach b); beyond the last point, the last sensitivity (the curve ends there). This is
    what ``numpy.interp(fp_rates, fp_per_image, sensitivity)`` computes on the whole curve, as nnDetection does
    (LUNA16 samples the same line on a grid of 10,001 points).

    Parameters
    ----------
    fp_per_image, sensitivity : numpy.ndarray [P]
        The curve, thresholds from high to low: both non-decreasing, ``fp_per_image[0] == 0``.
    fp_rates : sequence of float
        Finite, non-negative rates.

    Taught in ``book/08_evaluation.md``.
    """
    rates = _check_rates(fp_rates)
    fp, sens = np.asarray(fp_per_image, dtype=np.float64), np.asarray(sensitivity, dtype=np.float64)
    if fp.size == 0 or fp.shape != sens.shape or fp[0] != 0 or np.any(np.diff(fp) < 0):
        raise ValueError("a FROC curve starts at 0 false positives and never decreases")
    values, first = np.unique(fp, return_index=True)
    last = np.append(first[1:] - 1, fp.size - 1)
    top, bottom = sens[last], sens[first]
    out = np.empty(rates.shape)
    for i, r in enumerate(rates):
        j = int(np.searchsorted(values, r, side="right")) - 1
        if j == values.size - 1 or values[j] == r:
            out[i] = top[j]
        else:
            out[i] = top[j] + (bottom[j + 1] - top[j]) * (r - values[j]) / (values[j + 1] - values[j])
    return out


def _lesion_scores(detections: Sequence[Mapping[str, Any]], ground_truth: Sequence[Target],
                   classes: Tuple[int, ...], iou_thresh: float) -> Tuple[np.ndarray, np.ndarray, int]:
    """Per mass, the highest score of a detection that hits it (-inf when none); the scores of the false
    positives; the number of images."""
    preds, truths = parse_pair(detections, ground_truth)
    mass_scores: List[np.ndarray] = []
    fp_scores: List[np.ndarray] = []
    for p, t in zip(preds, truths):
        for c in classes:
            gt = t.boxes[t.labels == c].cpu()
            own = p.labels == c
            det, s = p.boxes[own].cpu(), p.scores[own].cpu().double()
            if gt.shape[0] == 0:
                fp_scores.append(s.numpy())
                continue
            if det.shape[0] == 0:
                mass_scores.append(np.full(gt.shape[0], -math.inf))
                continue
            hit = pairwise_iou(det, gt) > iou_thresh                                        # [D, K]
            best = torch.where(hit, s[:, None], torch.tensor(-math.inf, dtype=torch.float64))
            mass_scores.append(best.max(dim=0).values.numpy())
            fp_scores.append(s[~hit.any(dim=1)].numpy())
    return (np.concatenate(mass_scores) if mass_scores else np.zeros(0),
            np.concatenate(fp_scores) if fp_scores else np.zeros(0), len(truths))


def froc_cpm(detections: Sequence[Mapping[str, Any]], ground_truth: Sequence[Target],
             iou_thresh: float = 0.5, fp_rates: Sequence[float] = FROC_FP_RATES,
             classes: Sequence[int] = MASS_CLASSES) -> CPMResult:
    """Lesion-level FROC and its CPM: the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per image.

    The counting of LUNA16 (``noduleCADEvaluationLUNA16.py``) and nnDetection (``FROCMetric``), with boxes:

    - a **mass** is one ground-truth box of a class in ``classes``; it is **found** at threshold t when some
      detection of its class with ``score >= t`` has IoU > ``iou_thresh`` with it (the class must match, as in
      CorLoc and AP; a detection may find two overlapping masses);
    - a **false positive** is a detection of a class in ``classes`` with ``score >= t`` whose IoU with every
      ground-truth box of its class in its image is <= ``iou_thresh``: on a normal image, on an image of the
      other class, or beside the mass. A second detection of an already-found mass is neither a hit nor a false
      positive (LUNA16 ignores such candidates; COCO matching, which nnDetection uses, would count it false);
    - **sensitivity** = masses found / all masses; **false positives per image** = false positives / *all* test
      images, normal images included (both classes pooled: every mass weighs the same, nnDetection's default);
    - every distinct score is a threshold (the whole curve, not a grid), and the sensitivity at each rate is
      interpolated linearly (:func:`interpolate_froc`); the **CPM** is the mean over ``fp_rates``.

    With one mass per image a mass found is an image whose mass is found, so the curve of one class
    (``classes=(c,)``) has, at each of its thresholds t, :func:`corloc`'s per-class value at ``score_thresh=t``
    as its sensitivity. Detections with labels outside ``classes`` are ignored.

    Parameters
    ----------
    detections, ground_truth :
        As for :func:`corloc` (one entry per test image, same order).
    iou_thresh : float in (0, 1)
        A hit needs IoU > ``iou_thresh``.
    fp_rates : sequence of float
        The false-positive rates; default :data:`FROC_FP_RATES`.
    classes : sequence of int
        Classes counted, a subset of (1, 2).

    Returns
    -------
    CPMResult
        ``.cpm``, ``.sensitivity_at_rates``, the curve and the counts.

    Taught in ``book/08_evaluation.md``.
    """
    iou_thresh = check_iou_thresh(iou_thresh)
    cls = tuple(sorted({int(c) for c in classes}))
    if not cls or any(c not in MASS_CLASSES for c in cls):
        raise ValueError(f"classes must be a non-empty subset of {MASS_CLASSES} (1 benign, 2 malignant), "
                         f"got {list(classes)!r}")
    mass_scores, fp_scores, n_images = _lesion_scores(detections, ground_truth, cls, iou_thresh)
    rates = _check_rates(fp_rates)
    scores = np.concatenate([mass_scores[np.isfinite(mass_scores)], fp_scores])
    thresholds = np.concatenate([[math.inf], np.unique(scores)[::-1]])
    found = np.sort(mass_scores)
    fps = np.sort(fp_scores)
    n_found = found.size - np.searchsorted(found, thresholds, side="left")      # masses with best score >= t
    n_fp = fps.size - np.searchsorted(fps, thresholds, side="left")             # false positives with score >= t
    n_masses = int(mass_scores.size)
    fp_per_image = n_fp / n_images if n_images else np.zeros(thresholds.shape)
    if n_masses:
        sensitivity = n_found / n_masses
        at = interpolate_froc(fp_per_image, sensitivity, rates)
    else:
        sensitivity, at = np.full(thresholds.shape, math.nan), np.full(rates.shape, math.nan)
    return CPMResult(thresholds=thresholds, sensitivity=sensitivity, fp_per_image=fp_per_image, fp_rates=rates,
                     sensitivity_at_rates=at, cpm=float(np.mean(at)) if n_masses else math.nan,
                     n_masses=n_masses, n_images=n_images, classes=cls, iou_thresh=iou_thresh)
