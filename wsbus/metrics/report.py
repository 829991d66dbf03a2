"""Every detection metric of one set of detections, in one report: for ``results.json``, tables and ``wsbus evaluate``.

:func:`evaluate_detections` computes CorLoc (per class and overall, bootstrap CIs, per-image outcomes), AP50 and
AP@[.5:.95] (COCO), the FROC CPM, the image-level malignancy AUC and the screening numbers, and returns a
:class:`DetectionReport`; ``report.as_json()`` is a method entry's metrics in ``results.json``, ``report.rows()``
and ``report.write_csv(path)`` the per-image table of hits and misses.

Taught in ``book/08_evaluation.md``.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..checkpoint import atomic_write_text
from ..data.formats import CLASSES
from .ap import coco_ap
from .corloc import CORLOC_IOU_THRESH, CORLOC_SCORE_THRESH, CorLocResult, corloc
from .froc import CPMResult, FROCResult, froc, froc_cpm
from .image_level import false_positives_per_normal_image, image_auc, sensitivity_specificity
from .inputs import MASS_CLASSES, Pred, Target, Truth, check_iou_thresh, check_score_thresh, pairwise_iou, parse_pair

CSV_COLUMNS: Tuple[str, ...] = ("image_index", "image_id", "image_label", "class", "gt_boxes", "det_box", "det_score",
                                "iou", "hit", "false_positives")
"""The columns of :meth:`DetectionReport.write_csv`: one row per (image, mass class it contains), one per normal
image."""


@dataclass(frozen=True)
class ImageOutcome:
    """One row of the per-image table: an image and one mass class it contains (or a normal image).

    Attributes
    ----------
    index : position of the image in the input lists.
    image_id : its ``id`` / ``image_id`` (``None`` when the input gives none).
    image_label : ``"normal"``, ``"benign"`` or ``"malignant"`` (the whole image).
    mass_class : the class this row is about: ``"benign"`` or ``"malignant"``; ``"normal"`` for a normal image.
    gt_boxes : the ground-truth boxes of that class, ``[[x1, y1, x2, y2], ...]`` (empty for a normal image).
    box, score, iou : the best *counted* detection (``score >= score_thresh``) of that class: the highest IoU with
        a box of the class, the higher score among ties; ``None`` when there is none. For a normal image: the
        highest-scoring counted benign or malignant detection, and ``iou`` ``None``.
    hit : CorLoc's outcome for this class (``iou > iou_thresh``); ``None`` for a normal image.
    false_positives : counted benign or malignant detections in the image whose IoU with every ground-truth box of
        their own class is <= ``iou_thresh`` (the same number on both rows of a mixed image).

    Taught in ``book/08_evaluation.md``.
    """

    index: int
    image_id: Optional[str]
    image_label: str
    mass_class: str
    gt_boxes: List[List[float]]
    box: Optional[List[float]]
    score: Optional[float]
    iou: Optional[float]
    hit: Optional[bool]
    false_positives: int

    def as_row(self) -> Dict[str, str]:
        """The CSV row (:data:`CSV_COLUMNS`): boxes as ``"x1 y1 x2 y2"`` joined by ``"; "``, hit as 1 / 0."""
        def box(b: Sequence[float]) -> str:
            return " ".join(f"{v:.6g}" for v in b)

        def num(x: Optional[float]) -> str:
            return "" if x is None else f"{x:.6f}"
        return {"image_index": str(self.index), "image_id": "" if self.image_id is None else self.image_id,
                "image_label": self.image_label, "class": self.mass_class,
                "gt_boxes": "; ".join(box(b) for b in self.gt_boxes),
                "det_box": "" if self.box is None else box(self.box),
                "det_score": num(self.score), "iou": num(self.iou),
                "hit": "" if self.hit is None else str(int(self.hit)), "false_positives": str(self.false_positives)}


def _false_positives(boxes: torch.Tensor, labels: torch.Tensor, truth: Truth, iou_thresh: float,
                     voc_plus_one: bool) -> int:
    n = 0
    for c in MASS_CLASSES:
        own, gt = labels == c, truth.boxes[truth.labels == c].cpu()
        if not bool(own.any()):
            continue
        if gt.shape[0] == 0:
            n += int(own.sum())
        else:
            n += int((pairwise_iou(boxes[own], gt, voc_plus_one).max(dim=1).values <= iou_thresh).sum())
    return n


def _image_rows(i: int, p: Pred, t: Truth, iou_thresh: float, score_thresh: float,
                voc_plus_one: bool) -> List[ImageOutcome]:
    """The rows of one image (:class:`ImageOutcome`)."""
    counted = ((p.labels == 1) | (p.labels == 2)) & (p.scores >= score_thresh)
    order = torch.argsort(p.scores[counted].cpu(), descending=True, stable=True)  # ties below go to the higher score
    boxes, labels, scores = (x[counted].cpu()[order] for x in (p.boxes, p.labels, p.scores))
    n_fp = _false_positives(boxes, labels, t, iou_thresh, voc_plus_one)
    image_label = CLASSES[t.image_label]
    present = [c for c in MASS_CLASSES if bool((t.labels == c).any())]
    if not present:
        top = (boxes[0].tolist(), float(scores[0])) if scores.numel() else (None, None)
        return [ImageOutcome(i, t.image_id, image_label, "normal", [], top[0], top[1], None, None, n_fp)]
    rows = []
    for c in present:
        gt, own = t.boxes[t.labels == c].cpu(), labels == c
        box = score = best = None
        if bool(own.any()):
            ious = pairwise_iou(boxes[own], gt, voc_plus_one).max(dim=1).values
            k = int(torch.argmax(ious))  # the first maximum: the highest score among equal IoUs
            box, score, best = boxes[own][k].tolist(), float(scores[own][k]), float(ious[k])
        rows.append(ImageOutcome(i, t.image_id, image_label, CLASSES[c], gt.tolist(), box, score, best,
                                 best is not None and best > iou_thresh, n_fp))
    return rows


def _none(x: Optional[float]) -> Optional[float]:
    return None if x is None or math.isnan(x) else float(x)


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.2f}%"


@dataclass(frozen=True, eq=False, repr=False)
class DetectionReport:
    """Every metric of :func:`evaluate_detections` on one set of detections.

    Attributes
    ----------
    corloc : :class:`CorLocResult`
        CorLoc per class and overall with its per-image outcomes (IoU > ``iou_thresh``, ``score >= score_thresh``).
    ci : dict str -> (low, high)
        Bootstrap CI of ``"overall"``, ``"benign"`` and ``"malignant"`` CorLoc (``(nan, nan)`` for a class
        without images).
    ap50, ap : dict str -> float
        COCO AP at IoU 0.5 and averaged over 0.50:0.05:0.95, keys ``"benign"``, ``"malignant"``, ``"mAP"``
        (:func:`wsbus.evaluate.coco_ap`; equal to pycocotools' ``COCOeval``).
    cpm : :class:`CPMResult`
        The lesion-level FROC and its CPM (:func:`wsbus.evaluate.froc_cpm`).
    froc : :class:`FROCResult`
        The reference code's FROC curves (:func:`wsbus.evaluate.froc`), for figures.
    image_auc : dict
        :func:`wsbus.evaluate.image_auc`: ``normal_vs_mass``, ``benign_vs_malignant`` and the group sizes.
    screening : dict
        :func:`wsbus.evaluate.sensitivity_specificity` (mass vs normal at ``score_thresh``) and
        ``fp_per_normal_image``.
    images : tuple of :class:`ImageOutcome`
        The per-image table (:meth:`rows`, :meth:`write_csv`).
    settings : dict
        ``iou_thresh``, ``score_thresh``, ``voc_plus_one``, ``n_boot``, ``level``, ``seed``.

    Taught in ``book/08_evaluation.md``.
    """

    corloc: CorLocResult
    ci: Dict[str, Tuple[float, float]]
    ap50: Dict[str, float]
    ap: Dict[str, float]
    cpm: CPMResult
    froc: FROCResult
    image_auc: Dict[str, float]
    screening: Dict[str, float]
    images: Tuple[ImageOutcome, ...]
    settings: Dict[str, Any]

    @property
    def auc(self) -> float:
        """Image-level malignancy AUC: malignant vs benign images by their highest malignant score."""
        return float(self.image_auc["benign_vs_malignant"])

    @property
    def froc_cpm(self) -> float:
        """The CPM: mean lesion-level sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per image."""
        return float(self.cpm.cpm)

    def as_json(self) -> Dict[str, Any]:
        """The metrics of a method entry of ``results.json`` (design section 13), ``nan`` written as ``None``::

            {"corloc": {"overall", "benign", "malignant"}, "ci": [low, high] (overall CorLoc),
             "ap50": {"benign", "malignant", "mAP"}, "ap": {"benign", "malignant", "mAP"},
             "froc_cpm": float, "auc": float}
        """
        lo, hi = self.ci["overall"]
        return {"corloc": {k: _none(self.corloc[k]) for k in ("overall", "benign", "malignant")},
                "ci": None if math.isnan(lo) else [float(lo), float(hi)],
                "ap50": {k: _none(v) for k, v in self.ap50.items()},
                "ap": {k: _none(v) for k, v in self.ap.items()},
                "froc_cpm": _none(self.froc_cpm), "auc": _none(self.auc)}

    def as_dict(self) -> Dict[str, Any]:
        """:meth:`as_json` plus everything else, JSON-friendly: ``ci_by_class``, ``froc_sensitivity`` (at the
        CPM's rates), ``fp_rates``, ``image_auc``, ``sensitivity``, ``specificity``, ``fp_per_normal_image``,
        ``n_images`` (CorLoc groups, ``normal``, ``total``), ``n_masses``, ``per_image`` and ``image_index``
        (CorLoc outcomes, for paired tests) and ``settings``."""
        out = self.as_json()
        out.update({
            "ci_by_class": {k: (None if math.isnan(lo) else [float(lo), float(hi)]) for k, (lo, hi) in self.ci.items()},
            "froc_sensitivity": [_none(x) for x in self.cpm.sensitivity_at_rates.tolist()],
            "fp_rates": [float(r) for r in self.cpm.fp_rates],
            "image_auc": {k: _none(self.image_auc[k]) for k in ("normal_vs_mass", "benign_vs_malignant")},
            "sensitivity": _none(self.screening["sensitivity"]), "specificity": _none(self.screening["specificity"]),
            "fp_per_normal_image": _none(self.screening["fp_per_normal_image"]),
            "n_images": {**self.corloc.n_images, "normal": int(self.image_auc["n_normal"]),
                         "total": self.cpm.n_images},
            "n_masses": self.cpm.n_masses,
            "per_image": self.corloc.per_image.tolist(), "image_index": self.corloc.image_index.tolist(),
            "settings": dict(self.settings)})
        return out

    def rows(self) -> List[Dict[str, str]]:
        """The per-image table as CSV rows (:data:`CSV_COLUMNS`)."""
        return [r.as_row() for r in self.images]

    def write_csv(self, path: Union[str, os.PathLike]) -> Path:
        """Write the per-image table (hits and misses) to ``path`` as CSV, atomically; returns the path."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        return atomic_write_text(buf.getvalue(), path)

    def summary(self) -> str:
        """The text ``wsbus evaluate`` prints: CorLoc per class with CIs, then AP50, AP, the CPM and the AUC."""
        lines = [f"{'class':<10} {'images':>6} {'CorLoc':>8}   {100 * self.settings['level']:g}% CI"]
        for key in ("benign", "malignant", "overall"):
            v, (lo, hi), n = self.corloc[key], self.ci[key], self.corloc.n_images[key]
            ci = "n/a" if math.isnan(lo) else f"[{100 * lo:.2f}, {100 * hi:.2f}]"
            lines.append(f"{key:<10} {n:>6} {_pct(v):>8}   {ci}")
        for name, what, d in (("AP50", "COCO, IoU >= 0.5, every detection", self.ap50),
                              ("AP@[.5:.95]", "COCO, IoU 0.50:0.05:0.95", self.ap)):
            lines.append(f"{name} ({what}): benign {_pct(d['benign'])}, malignant {_pct(d['malignant'])}, "
                         f"mAP {_pct(d['mAP'])}")
        lines.append(f"FROC CPM (mean lesion sensitivity at 1/8 ... 8 false positives per image, IoU > "
                     f"{self.cpm.iou_thresh:g}; {self.cpm.n_masses} masses, {self.cpm.n_images} images): "
                     f"{_pct(self.cpm.cpm)}")
        lines.append("  sensitivity at " + ", ".join(f"{r:g}: {_pct(x)}" for r, x in
                                                    zip(self.cpm.fp_rates, self.cpm.sensitivity_at_rates)))
        n = self.image_auc
        auc = "n/a" if math.isnan(self.auc) else f"{self.auc:.4f}"
        lines.append(f"malignancy AUC (malignant vs benign images, highest malignant score): {auc} "
                     f"({n['n_malignant']} malignant, {n['n_benign']} benign)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"DetectionReport(CorLoc {_pct(self.corloc.overall)}, AP50 {_pct(self.ap50['mAP'])}, "
                f"AP {_pct(self.ap['mAP'])}, CPM {_pct(self.froc_cpm)}, AUC {_pct(self.auc)}; "
                f"{self.cpm.n_images} images)")


def evaluate_detections(detections: Sequence[Mapping[str, Any]], ground_truth: Sequence[Target], *,
                        iou_thresh: float = CORLOC_IOU_THRESH, score_thresh: float = CORLOC_SCORE_THRESH,
                        voc_plus_one: bool = False, n_boot: int = 1000, level: float = 0.95,
                        seed: int = 0) -> DetectionReport:
    """Every metric of :mod:`wsbus.evaluate` on one set of detections, as a :class:`DetectionReport`.

    - CorLoc (:func:`corloc`, IoU > ``iou_thresh``, ``score >= score_thresh``, default
      :data:`CORLOC_SCORE_THRESH`) per class and overall, with percentile bootstrap CIs (``n_boot``, ``level``,
      ``seed``);
    - AP50 and AP@[.5:.95] per class and mAP by the COCO protocol (:func:`coco_ap`; every detection, no score
      threshold);
    - the FROC CPM (:func:`froc_cpm`, IoU > ``iou_thresh``) and the reference's FROC curves (:func:`froc`);
    - the image-level AUCs (:func:`image_auc`; ``auc`` is the malignancy one), sensitivity / specificity and false
      positives per normal image at ``score_thresh``;
    - the per-image table of hits and misses.

    ``voc_plus_one`` (the reference's +1-pixel IoU) applies to CorLoc, the reference FROC and the per-image table;
    AP and the CPM always use COCO's continuous boxes.

    ``report.as_json()`` gives the ``results.json`` keys ``corloc``, ``ci``, ``ap50``, ``ap``, ``froc_cpm``,
    ``auc``; ``report.as_dict()`` everything; ``report.write_csv(path)`` the per-image table.

    Taught in ``book/08_evaluation.md``.
    """
    iou_thresh, score_thresh = check_iou_thresh(iou_thresh), check_score_thresh(score_thresh)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    preds, truths = parse_pair(detections, ground_truth)
    dets, gts = [p.as_dict() for p in preds], [t.as_dict() for t in truths]
    cl = corloc(dets, gts, iou_thresh=iou_thresh, score_thresh=score_thresh, voc_plus_one=voc_plus_one)
    ap = coco_ap(dets, gts)
    ss = sensitivity_specificity(dets, gts, score_thresh=score_thresh)
    screening = {"sensitivity": ss["sensitivity"], "specificity": ss["specificity"],
                 "fp_per_normal_image": false_positives_per_normal_image(dets, gts, score_thresh=score_thresh)}
    images = [row for i, (p, t) in enumerate(zip(preds, truths))
              for row in _image_rows(i, p, t, iou_thresh, score_thresh, voc_plus_one)]
    return DetectionReport(
        corloc=cl, ci=cl.ci(n_boot=n_boot, level=level, seed=seed), ap50=ap["ap50"], ap=ap["ap"],
        cpm=froc_cpm(dets, gts, iou_thresh=iou_thresh),
        froc=froc(dets, gts, iou_thresh=iou_thresh, voc_plus_one=voc_plus_one),
        image_auc=image_auc(dets, gts), screening=screening, images=tuple(images),
        settings={"iou_thresh": iou_thresh, "score_thresh": score_thresh, "voc_plus_one": bool(voc_plus_one),
                  "n_boot": n_boot, "level": level, "seed": seed})
