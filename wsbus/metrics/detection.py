"""Detection metrics: CorLoc, AP, image-level AUC, sensitivity / specificity, false positives per normal image.

Inputs follow torchvision's detection convention, one dict per test image, in the same order:

- ``detections[i]``: ``boxes`` [D, 4] (x1, y1, x2, y2, pixels), ``labels`` [D] (1 benign, 2 malignant),
  ``scores`` [D] -- what a torchvision detector (and :class:`wsbus.models.WeakSemiFasterRCNN`) returns in eval mode;
- ``ground_truth[i]``: ``boxes`` [K, 4], ``labels`` [K] in {1, 2}; K = 0 for a normal image. A
  :class:`wsbus.data.Sample` with known boxes is accepted too. An optional ``image_label`` (0, 1, 2) overrides
  the image label derived from the boxes (malignant dominates, none = normal); ``id`` or ``image_id`` names the
  image in error messages.

Tensors may live on any device (CPU, CUDA, ...); numpy arrays and lists are accepted. Every result is a plain
Python / numpy value on the CPU.

Taught in ``book/08_evaluation.md``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy import stats
from torch import Tensor
from torchvision.ops import box_iou

from ..data.formats import CLASSES, Sample
from .stats import bootstrap_ci

MASS_CLASSES: Tuple[int, int] = (1, 2)
"""The classes CorLoc, AP and the image scores are computed for: 1 benign, 2 malignant."""

Target = Union[Mapping[str, Any], Sample]


# --------------------------------------------------------------------------------------------------------------
# Input parsing: one place that checks shapes, dtypes and values, and names the image on error.
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Pred:
    boxes: Tensor   # [D, 4] floating
    labels: Tensor  # [D] int64
    scores: Tensor  # [D] floating


@dataclass(frozen=True)
class _Truth:
    boxes: Tensor   # [K, 4] floating
    labels: Tensor  # [K] int64, values in {1, 2}
    image_label: int
    name: str


def _image_name(i: int, item: Any, what: str) -> str:
    ident = None
    if isinstance(item, Sample):
        ident = item.id
    elif isinstance(item, Mapping):
        for key in ("id", "image_id"):
            if key in item:
                v = item[key]
                ident = v.item() if isinstance(v, Tensor) and v.numel() == 1 else v
                break
    return f"{what}[{i}]" + (f" (image {ident!r})" if ident is not None else "")


def _tensor(x: Any, name: str, key: str, floating: bool) -> Tensor:
    if x is None:
        raise ValueError(f"{name}: '{key}' is None")
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name}: '{key}' cannot be read as a tensor ({e})") from None
    if floating:
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name}: '{key}' must be real numbers, got dtype {t.dtype}")
        if not t.is_floating_point():
            t = t.to(torch.float32)
    else:
        if t.is_floating_point():
            if t.numel() and not bool(torch.all(t == torch.round(t))):
                raise ValueError(f"{name}: '{key}' must hold integer class indices, got {t.flatten()[:5].tolist()}")
        elif t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name}: '{key}' must be integer class indices, got dtype {t.dtype}")
        t = t.to(torch.int64)
    return t


def _boxes(x: Any, name: str) -> Tensor:
    t = _tensor(x, name, "boxes", floating=True)
    if t.numel() == 0:
        return t.reshape(0, 4)
    if t.ndim != 2 or t.shape[1] != 4:
        raise ValueError(f"{name}: 'boxes' must have shape [N, 4] (x1, y1, x2, y2), got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: 'boxes' has non-finite coordinates")
    bad = (t[:, 2] < t[:, 0]) | (t[:, 3] < t[:, 1])
    if bool(bad.any()):
        k = int(torch.nonzero(bad)[0])
        raise ValueError(f"{name}: box {k} {t[k].tolist()} is inverted (need x1 <= x2 and y1 <= y2)")
    return t


def _vector(x: Any, name: str, key: str, n: int, floating: bool) -> Tensor:
    t = _tensor(x, name, key, floating)
    if t.numel() == 0:
        t = t.reshape(0)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"{name}: '{key}' must have shape [{n}] (one per box), got {tuple(t.shape)}")
    return t


def _as_list(items: Any, what: str) -> list:
    if isinstance(items, (Mapping, Sample, Tensor, np.ndarray, str)):
        raise TypeError(f"{what} must be a list with one entry per image, got a single {type(items).__name__}")
    try:
        return list(items)
    except TypeError:
        raise TypeError(f"{what} must be a list with one entry per image, got {type(items).__name__}") from None


def _parse_detections(detections: Sequence[Mapping[str, Any]]) -> List[_Pred]:
    out = []
    for i, d in enumerate(_as_list(detections, "detections")):
        name = _image_name(i, d, "detections")
        if not isinstance(d, Mapping):
            raise TypeError(f"{name} must be a dict with 'boxes', 'labels' and 'scores', got {type(d).__name__}")
        missing = [k for k in ("boxes", "labels", "scores") if k not in d]
        if missing:
            raise ValueError(f"{name} is missing {missing} (needs 'boxes', 'labels' and 'scores')")
        boxes = _boxes(d["boxes"], name)
        labels = _vector(d["labels"], name, "labels", boxes.shape[0], floating=False).to(boxes.device)
        scores = _vector(d["scores"], name, "scores", boxes.shape[0], floating=True).to(boxes.device)
        if not bool(torch.isfinite(scores).all()):
            raise ValueError(f"{name}: 'scores' has NaN or infinite values")
        out.append(_Pred(boxes, labels, scores))
    return out


def _parse_truth(ground_truth: Sequence[Target]) -> List[_Truth]:
    out = []
    for i, g in enumerate(_as_list(ground_truth, "ground_truth")):
        name = _image_name(i, g, "ground_truth")
        if isinstance(g, Sample):
            if not g.is_strong:
                raise ValueError(f"{name} is a weak sample (boxes unknown); evaluation needs ground-truth boxes")
            raw_boxes, raw_labels, image_label = g.boxes, g.labels, g.image_label
        elif isinstance(g, Mapping):
            missing = [k for k in ("boxes", "labels") if k not in g]
            if missing:
                raise ValueError(f"{name} is missing {missing} (needs 'boxes' and 'labels'; empty for a normal image)")
            raw_boxes, raw_labels, image_label = g["boxes"], g["labels"], g.get("image_label")
        else:
            raise TypeError(f"{name} must be a dict with 'boxes' and 'labels' or a Sample, got {type(g).__name__}")
        boxes = _boxes(raw_boxes, name)
        labels = _vector(raw_labels, name, "labels", boxes.shape[0], floating=False).to(boxes.device)
        if labels.numel() and not bool(((labels == 1) | (labels == 2)).all()):
            raise ValueError(f"{name}: ground-truth labels must be 1 (benign) or 2 (malignant), got "
                             f"{sorted(set(labels.tolist()))}")
        derived = int(labels.max()) if labels.numel() else 0
        if image_label is None:
            image_label = derived
        else:
            image_label = int(image_label.item() if isinstance(image_label, Tensor) else image_label)
            if image_label not in (0, 1, 2):
                raise ValueError(f"{name}: image_label must be 0, 1 or 2, got {image_label}")
            if (image_label == 0) != (derived == 0):
                raise ValueError(f"{name}: image_label {image_label} ({CLASSES[image_label]}) contradicts its "
                                 f"{labels.numel()} ground-truth box(es)")
        out.append(_Truth(boxes, labels, image_label, name))
    return out


def _parse_pair(detections: Sequence[Mapping[str, Any]],
                ground_truth: Sequence[Target]) -> Tuple[List[_Pred], List[_Truth]]:
    preds, truths = _parse_detections(detections), _parse_truth(ground_truth)
    if len(preds) != len(truths):
        raise ValueError(f"detections has {len(preds)} images but ground_truth has {len(truths)}; "
                         "they must list the same test images in the same order")
    return preds, truths


def _iou(a: Tensor, b: Tensor, voc_plus_one: bool) -> Tensor:
    """IoU matrix [len(a), len(b)] by torchvision's box_iou, optionally in the VOC (+1 pixel) convention."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b = a.to(dtype), b.to(device=a.device, dtype=dtype)
    if voc_plus_one:
        # VOC / the reference code treat x2, y2 as inclusive pixel indices: width = x2 - x1 + 1, and the
        # intersection width is min(x2) - max(x1) + 1. Shifting x2, y2 of both boxes by one pixel gives exactly that.
        one = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=dtype, device=a.device)
        a, b = a + one, b + one
    return box_iou(a, b)


# --------------------------------------------------------------------------------------------------------------
# CorLoc
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, repr=False)
class CorLocResult:
    """Result of :func:`corloc`.

    Attributes
    ----------
    benign, malignant : float
        CorLoc of each class in [0, 1] (``nan`` when the test set has no image of that class).
    overall : float
        CorLoc over all images with at least one mass (``nan`` when there is none).
    per_image : numpy.ndarray of bool
        One outcome per image with at least one mass, in input order (``overall == per_image.mean()``).
    image_index : numpy.ndarray of int
        Index in the input lists of the images ``per_image`` refers to.
    per_class : dict str -> numpy.ndarray of bool
        ``"benign"`` / ``"malignant"``: outcome per image having a ground-truth box of that class.
    class_image_index : dict str -> numpy.ndarray of int
        The input indices of those images.
    n_images : dict str -> int
        Number of images behind ``benign``, ``malignant`` and ``overall``.
    iou_thresh, score_thresh, voc_plus_one :
        The settings used.

    Taught in ``book/08_evaluation.md``.
    """

    benign: float
    malignant: float
    overall: float
    per_image: np.ndarray
    image_index: np.ndarray
    per_class: Dict[str, np.ndarray]
    class_image_index: Dict[str, np.ndarray]
    n_images: Dict[str, int]
    iou_thresh: float
    score_thresh: float
    voc_plus_one: bool

    def __getitem__(self, key: str) -> float:
        """``result["overall"]``, ``result["benign"]``, ``result["malignant"]``."""
        if key not in ("overall", "benign", "malignant"):
            raise KeyError(f"{key!r}; CorLoc is reported for 'overall', 'benign' and 'malignant'")
        return getattr(self, key)

    def outcomes(self, which: str = "overall") -> np.ndarray:
        """Per-image outcomes behind ``which`` (``"overall"``, ``"benign"`` or ``"malignant"``)."""
        if which == "overall":
            return self.per_image
        if which not in self.per_class:
            raise KeyError(f"{which!r}; choose 'overall', 'benign' or 'malignant'")
        return self.per_class[which]

    def ci(self, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Dict[str, Tuple[float, float]]:
        """Bootstrap CI (:func:`wsbus.evaluate.bootstrap_ci`) of overall, benign and malignant CorLoc.

        A class without images gets ``(nan, nan)``.
        """
        out = {}
        for key in ("overall", "benign", "malignant"):
            x = self.outcomes(key)
            out[key] = bootstrap_ci(x, n_boot=n_boot, level=level, seed=seed) if x.size else (math.nan, math.nan)
        return out

    def as_dict(self) -> Dict[str, Any]:
        """JSON-friendly summary (fractions; ``None`` for ``nan``)."""
        def f(x: float) -> Optional[float]:
            return None if math.isnan(x) else float(x)
        return {"overall": f(self.overall), "benign": f(self.benign), "malignant": f(self.malignant),
                "n_images": dict(self.n_images), "iou_thresh": self.iou_thresh,
                "score_thresh": self.score_thresh, "voc_plus_one": self.voc_plus_one}

    def __repr__(self) -> str:
        def pct(key: str) -> str:
            v = getattr(self, key)
            return f"{key}={'nan' if math.isnan(v) else f'{100 * v:.2f}%'} (n={self.n_images[key]})"
        conv = ", VOC +1" if self.voc_plus_one else ""
        return (f"CorLocResult({pct('overall')}, {pct('benign')}, {pct('malignant')}; "
                f"IoU > {self.iou_thresh:g}, score >= {self.score_thresh:g}{conv})")


def _check_thresh(value: float, name: str) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def corloc(detections: Sequence[Mapping[str, Any]], ground_truth: Sequence[Target], iou_thresh: float = 0.5,
           score_thresh: float = 0.5, voc_plus_one: bool = False) -> CorLocResult:
    """Correct localisation (CorLoc), the paper's main metric, per class and overall.

    For each class c in {1 benign, 2 malignant}: over the test images having a ground-truth box of class c, the
    fraction for which *some* detection of class c with ``score >= score_thresh`` has ``IoU > iou_thresh`` with
    a ground-truth box of class c. The detector must therefore find the mass *and* name its class.

    **Overall** CorLoc is over all images with at least one mass; an image counts as correct when it is correct
    for *every* class it contains. For the usual single-mass-class image this is the same as the per-class
    outcome. (The reference code pools the per-class counts instead, sum(correct) / sum(images) over classes,
    which counts a mixed benign + malignant image twice; the two definitions agree whenever no test image
    holds both classes, as in the paper's test set. Ours keeps one outcome per image, so bootstrap CIs and
    paired tests resample images, as the paper describes.) Normal images (no box) do not enter CorLoc; see
    :func:`false_positives_per_normal_image` for them.

    Parameters
    ----------
    detections : list of dict(boxes [D, 4], labels [D], scores [D])
        One dict per test image, torchvision's output format; any device.
    ground_truth : list of dict(boxes [K, 4], labels [K]) or :class:`wsbus.data.Sample`
        Same images, same order; K = 0 for a normal image.
    iou_thresh : float
        A detection localises a mass when IoU > ``iou_thresh`` (strictly, as in the paper and the reference).
    score_thresh : float
        Only detections with ``score >= score_thresh`` count (the reference's 0.5).
    voc_plus_one : bool
        Use the reference code's VOC convention, where widths are ``x2 - x1 + 1`` (inclusive pixel indices).
        The default is torchvision's continuous-coordinate ``box_iou``.

    Returns
    -------
    CorLocResult
        ``.benign``, ``.malignant``, ``.overall`` and the per-image outcomes behind them.

    Taught in ``book/08_evaluation.md``.
    """
    iou_thresh = _check_thresh(iou_thresh, "iou_thresh")
    score_thresh = _check_thresh(score_thresh, "score_thresh")
    preds, truths = _parse_pair(detections, ground_truth)
    outcome: Dict[int, List[bool]] = {c: [] for c in MASS_CLASSES}
    index: Dict[int, List[int]] = {c: [] for c in MASS_CLASSES}
    per_image: List[bool] = []
    image_index: List[int] = []
    for i, (p, t) in enumerate(zip(preds, truths)):
        present = [c for c in MASS_CLASSES if bool((t.labels == c).any())]
        if not present:
            continue
        ok_all = True
        for c in present:
            gt = t.boxes[t.labels == c]
            det = p.boxes[(p.labels == c) & (p.scores >= score_thresh)]
            ok = det.shape[0] > 0 and bool((_iou(det, gt, voc_plus_one) > iou_thresh).any())
            outcome[c].append(ok)
            index[c].append(i)
            ok_all &= ok
        per_image.append(ok_all)
        image_index.append(i)

    def frac(x: List[bool]) -> float:
        return float(np.mean(x)) if x else math.nan

    names = {c: CLASSES[c] for c in MASS_CLASSES}
    return CorLocResult(
        benign=frac(outcome[1]), malignant=frac(outcome[2]), overall=frac(per_image),
        per_image=np.asarray(per_image, dtype=bool), image_index=np.asarray(image_index, dtype=np.int64),
        per_class={names[c]: np.asarray(outcome[c], dtype=bool) for c in MASS_CLASSES},
        class_image_index={names[c]: np.asarray(index[c], dtype=np.int64) for c in MASS_CLASSES},
        n_images={"overall": len(per_image), **{names[c]: len(outcome[c]) for c in MASS_CLASSES}},
        iou_thresh=iou_thresh, score_thresh=score_thresh, voc_plus_one=bool(voc_plus_one))


# --------------------------------------------------------------------------------------------------------------
# Average precision
# --------------------------------------------------------------------------------------------------------------
def average_precision(detections: Sequence[Mapping[str, Any]], ground_truth: Sequence[Target],
                      iou_thresh: float = 0.5, max_detections: int = 100) -> Dict[str, float]:
    """Per-class average precision and mAP at one IoU threshold (torchmetrics' ``MeanAveragePrecision``).

    AP is the area under the precision-recall curve of a class's detections ranked by score, pooled over the test
    images; it uses every detection (no score threshold), unlike CorLoc. Computed by
    :class:`torchmetrics.detection.MeanAveragePrecision` with ``iou_thresholds=[iou_thresh]`` and the
    pycocotools backend, i.e. the COCO protocol: greedy matching by score, a detection matches when
    IoU >= ``iou_thresh``, precision interpolated at 101 recall points, at most ``max_detections`` detections per
    image and class. (The reference code uses the VOC07 11-point AP with IoU > 0.5 and +1-pixel widths; the
    numbers differ slightly.)

    Returns
    -------
    dict
        ``{"benign": AP_1, "malignant": AP_2, "mAP": mean}``; a class without ground-truth boxes has AP ``nan``
        and ``mAP`` is the mean over the classes that have them (``nan`` if none).

    Taught in ``book/08_evaluation.md``.
    """
    from torchmetrics.detection import MeanAveragePrecision

    iou_thresh = _check_thresh(iou_thresh, "iou_thresh")
    if isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 10:
        raise ValueError(f"max_detections must be an integer >= 10, got {max_detections!r}")
    preds, truths = _parse_pair(detections, ground_truth)
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=[iou_thresh],
                                  max_detection_thresholds=[1, 10, max_detections], class_metrics=True,
                                  backend="pycocotools")
    # pycocotools runs on the CPU; moving the (small) per-image tensors there keeps any input device working.
    metric.update([dict(boxes=p.boxes.cpu().float(), labels=p.labels.cpu(), scores=p.scores.cpu().float())
                   for p in preds],
                  [dict(boxes=t.boxes.cpu().float(), labels=t.labels.cpu()) for t in truths])
    res = metric.compute()
    per_class = dict(zip(res["classes"].reshape(-1).tolist(), res["map_per_class"].reshape(-1).tolist()))
    out: Dict[str, float] = {}
    has_gt = {c: any(bool((t.labels == c).any()) for t in truths) for c in MASS_CLASSES}
    for c in MASS_CLASSES:
        ap = per_class.get(c, -1.0)
        out[CLASSES[c]] = float(ap) if has_gt[c] and ap >= 0 else math.nan
    vals = [out[CLASSES[c]] for c in MASS_CLASSES if not math.isnan(out[CLASSES[c]])]
    out["mAP"] = float(np.mean(vals)) if vals else math.nan
    return out


# --------------------------------------------------------------------------------------------------------------
# Image-level scores: AUC, sensitivity / specificity, false positives
# --------------------------------------------------------------------------------------------------------------
def image_scores(detections: Sequence[Mapping[str, Any]],
                 classes: Sequence[int] = MASS_CLASSES) -> np.ndarray:
    """Maximum detection score of each class in each image.

    Returns
    -------
    numpy.ndarray
        float64 [N, len(classes)]; column j is the highest score of a detection labelled ``classes[j]``
        (0 when the image has none). With the default classes: column 0 benign, column 1 malignant.
    """
    preds = _parse_detections(detections)
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
    - ``benign_vs_malignant``: among the images with a mass, positives are malignant; the score is the highest
      *malignant* detection score.

    AUC is the Mann-Whitney statistic U / (n_pos n_neg) (:func:`scipy.stats.mannwhitneyu`): the probability that a
    random positive image outranks a random negative one, ties counting one half. ``nan`` when a group is empty.

    Returns
    -------
    dict
        ``normal_vs_mass``, ``benign_vs_malignant`` (floats) and the group sizes ``n_normal``, ``n_benign``,
        ``n_malignant``.

    Taught in ``book/08_evaluation.md``.
    """
    preds, truths = _parse_pair(detections, ground_truth)
    scores = image_scores([{"boxes": p.boxes, "labels": p.labels, "scores": p.scores} for p in preds])
    y = np.array([t.image_label for t in truths], dtype=np.int64)
    mass = scores.max(axis=1)
    malignant = scores[:, MASS_CLASSES.index(2)]
    return {"normal_vs_mass": _auc(mass[y > 0], mass[y == 0]),
            "benign_vs_malignant": _auc(malignant[y == 2], malignant[y == 1]),
            "n_normal": int(np.sum(y == 0)), "n_benign": int(np.sum(y == 1)), "n_malignant": int(np.sum(y == 2))}


def sensitivity_specificity(detections: Sequence[Mapping[str, Any]], ground_truth: Sequence[Target],
                            score_thresh: float = 0.5,
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
    score_thresh = _check_thresh(score_thresh, "score_thresh")
    if positive not in ("mass", "malignant"):
        raise ValueError(f"positive must be 'mass' or 'malignant', got {positive!r}")
    preds, truths = _parse_pair(detections, ground_truth)
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
                                     score_thresh: float = 0.5) -> float:
    """Mean number of benign or malignant detections with ``score >= score_thresh`` on a normal image.

    Every such detection is a false positive, since a normal image has no mass (the reference code's count on its
    normal test set). ``nan`` when there is no normal image.

    Taught in ``book/08_evaluation.md``.
    """
    score_thresh = _check_thresh(score_thresh, "score_thresh")
    preds, truths = _parse_pair(detections, ground_truth)
    counts = [int(((p.labels >= 1) & (p.labels <= 2) & (p.scores >= score_thresh)).sum())
              for p, t in zip(preds, truths) if t.image_label == 0]
    return float(np.mean(counts)) if counts else math.nan


def evaluate_detections(detections: Sequence[Mapping[str, Any]], ground_truth: Sequence[Target],
                        iou_thresh: float = 0.5, score_thresh: float = 0.5, voc_plus_one: bool = False,
                        n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                        compute_ap: bool = True) -> Dict[str, Any]:
    """Every metric of :mod:`wsbus.evaluate` on one set of detections, as a JSON-friendly dict.

    Returns
    -------
    dict with
        ``corloc`` {overall, benign, malignant}, ``ci`` {same keys: [low, high]} (bootstrap, ``n_boot``, ``level``,
        ``seed``), ``n_images`` (per CorLoc group and ``"total"``), ``per_image`` / ``image_index`` (CorLoc
        outcome per image with a mass, for paired tests), ``ap`` {benign, malignant, mAP} (when ``compute_ap``),
        ``auc`` {normal_vs_mass, benign_vs_malignant}, ``sensitivity``, ``specificity`` (mass vs normal at
        ``score_thresh``), ``fp_per_normal_image`` and ``settings``. Undefined values are ``None``.

    Taught in ``book/08_evaluation.md``.
    """
    preds, truths = _parse_pair(detections, ground_truth)
    dets = [{"boxes": p.boxes, "labels": p.labels, "scores": p.scores} for p in preds]
    gts = [{"boxes": t.boxes, "labels": t.labels, "image_label": t.image_label} for t in truths]
    cl = corloc(dets, gts, iou_thresh=iou_thresh, score_thresh=score_thresh, voc_plus_one=voc_plus_one)
    auc = image_auc(dets, gts)
    ss = sensitivity_specificity(dets, gts, score_thresh=score_thresh)

    def f(x: float) -> Optional[float]:
        return None if x is None or math.isnan(x) else float(x)

    out: Dict[str, Any] = {
        "corloc": {k: f(cl[k]) for k in ("overall", "benign", "malignant")},
        "ci": {k: (None if math.isnan(lo) else [lo, hi])
               for k, (lo, hi) in cl.ci(n_boot=n_boot, level=level, seed=seed).items()},
        "n_images": {**cl.n_images, "normal": auc["n_normal"], "total": len(truths)},
        "per_image": cl.per_image.tolist(),
        "image_index": cl.image_index.tolist(),
        "auc": {k: f(auc[k]) for k in ("normal_vs_mass", "benign_vs_malignant")},
        "sensitivity": f(ss["sensitivity"]),
        "specificity": f(ss["specificity"]),
        "fp_per_normal_image": f(false_positives_per_normal_image(dets, gts, score_thresh=score_thresh)),
        "settings": {"iou_thresh": iou_thresh, "score_thresh": score_thresh, "voc_plus_one": bool(voc_plus_one),
                     "n_boot": n_boot, "level": level, "seed": seed},
    }
    if compute_ap:
        out["ap"] = {k: f(v) for k, v in average_precision(dets, gts, iou_thresh=iou_thresh).items()}
    return out


# --------------------------------------------------------------------------------------------------------------
# FROC: sensitivity (CorLoc) against false positives per image, as the reference code's voc_eval_bus counts them
# --------------------------------------------------------------------------------------------------------------
REFERENCE_FROC_THRESHOLDS: Tuple[float, ...] = tuple(k / 20 for k in range(20, -1, -1))
"""The reference's FROC score thresholds 1.0, 0.95, ..., 0.05, 0.0 (``np.arange(1.0, -0.01, -0.05)`` there)."""

FROC_FP_RATES: Tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""The usual FROC summary points (false positives per image) for :meth:`FROCResult.sensitivity_at`."""

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
        images. The reference code reports the curve points only (``froc_curve_pts``), not such a summary;
        the default rates 1/8 ... 8 are the customary ones (the mean over them is the CPM score).

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
    iou_thresh = _check_thresh(iou_thresh, "iou_thresh")
    thr = _froc_thresholds(thresholds)
    preds, truths = _parse_pair(detections, ground_truth)
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
                hit = _iou(det, gt, voc_plus_one).max(dim=1).values > iou_thresh   # ovmax > ovthresh
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
