"""CorLoc, the paper's metric: the fraction of images whose mass is found, in the right class, at one score threshold.

Taught in ``book/08_evaluation.md``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..data.formats import CLASSES
from .inputs import MASS_CLASSES, Target, check_iou_thresh, check_score_thresh, pairwise_iou, parse_pair
from .stats import bootstrap_ci

CORLOC_SCORE_THRESH: float = 0.5
"""The one default score threshold of CorLoc, in the library and in every command: a detection counts when
``score >= 0.5``, the reference code's threshold. Ranges are checked: scores in [0, 1], IoU in (0, 1)."""

CORLOC_IOU_THRESH: float = 0.5
"""CorLoc's default IoU threshold: a detection localises a mass when ``IoU > 0.5`` (strictly), as in the paper."""


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
    iou_thresh, score_thresh, voc_plus_one, class_free :
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
    class_free: bool = False

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
                "score_thresh": self.score_thresh, "voc_plus_one": self.voc_plus_one, "class_free": self.class_free}

    def __repr__(self) -> str:
        def pct(key: str) -> str:
            v = getattr(self, key)
            return f"{key}={'nan' if math.isnan(v) else f'{100 * v:.2f}%'} (n={self.n_images[key]})"
        conv = (", VOC +1" if self.voc_plus_one else "") + (", class-free" if self.class_free else "")
        return (f"CorLocResult({pct('overall')}, {pct('benign')}, {pct('malignant')}; "
                f"IoU > {self.iou_thresh:g}, score >= {self.score_thresh:g}{conv})")


def corloc(detections: Sequence[Mapping[str, Any]], ground_truth: Sequence[Target],
           iou_thresh: float = CORLOC_IOU_THRESH, score_thresh: float = CORLOC_SCORE_THRESH,
           voc_plus_one: bool = False, class_free: bool = False) -> CorLocResult:
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
    iou_thresh : float in (0, 1)
        A detection localises a mass when IoU > ``iou_thresh`` (strictly, as in the paper and the reference).
    score_thresh : float in [0, 1]
        Only detections with ``score >= score_thresh`` count; default :data:`CORLOC_SCORE_THRESH` (0.5, the
        reference's). A threshold outside its range raises ``ValueError``.
    voc_plus_one : bool
        Use the reference code's VOC convention, where widths are ``x2 - x1 + 1`` (inclusive pixel indices).
        The default is torchvision's continuous-coordinate ``box_iou``.
    class_free : bool
        Ours, a diagnosis, not the paper's metric: a detection of *either* class counts, so the outcome says only
        whether the mass was found (localisation), not whether its class was named. Every CorLoc hit is a
        class-free hit; the share of class-free hits that are CorLoc hits is how often a found mass is named right.

    Returns
    -------
    CorLocResult
        ``.benign``, ``.malignant``, ``.overall`` and the per-image outcomes behind them.

    Taught in ``book/08_evaluation.md``.
    """
    iou_thresh = check_iou_thresh(iou_thresh)
    score_thresh = check_score_thresh(score_thresh)
    preds, truths = parse_pair(detections, ground_truth)
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
            keep = p.scores >= score_thresh if class_free else (p.labels == c) & (p.scores >= score_thresh)
            det = p.boxes[keep]
            ok = det.shape[0] > 0 and bool((pairwise_iou(det, gt, voc_plus_one) > iou_thresh).any())
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
        iou_thresh=iou_thresh, score_thresh=score_thresh, voc_plus_one=bool(voc_plus_one),
        class_free=bool(class_free))

