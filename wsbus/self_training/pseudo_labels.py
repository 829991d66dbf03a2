"""Pseudo-labels of weak images and what is done with them: the best-of-class rule, the reconfigured training sets,
and how good the pseudo-boxes are.

Taught in ``book/07_self_training.md``.

* :func:`pseudo_label`: the pseudo ground truth of a weak image is the detector's most confident detection whose
  class equals the image label (:func:`best_of_class`; none: the image stays weak);
* :func:`reconfigure`: rank the weak images by that confidence and move the top fraction (:func:`n_moved`) to the
  strong set with their pseudo-boxes, the rest stay weak;
* :func:`pseudo_box_precision` (:class:`PseudoBoxPrecision`): IoU > 0.5 with a hidden ground-truth box of the same
  class, overall and as a function of the rank, when the data has the weak images' boxes;
* :func:`top_class_accuracy`: how often the most confident detection of an image has the image's class.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou, clip_boxes_to_image

from ..data.formats import DataError, Sample
from ..inference import detect
from ..viz.detections import plot_precision_vs_rank

__all__ = ["Device", "PseudoLabel", "PseudoBoxPrecision", "pseudo_label", "best_of_class", "reconfigure", "n_moved",
           "pseudo_box_precision", "top_class_accuracy"]

#: A device argument: ``"cpu"``, ``"cuda"``, a :class:`torch.device`, or None (the default of the callee).
Device = Union[str, torch.device, None]

@dataclass(frozen=True)
class PseudoLabel:
    """The pseudo ground truth of one weak image: its most confident detection of the image's class.

    Attributes
    ----------
    id : the weak sample's id.
    box : float32 [4] (x1, y1, x2, y2) in the image's pixel coordinates, inside the image.
    label : the class of the box (= the image label: 1 benign, 2 malignant).
    score : the detection's confidence, used to rank the weak images.

    Taught in ``book/07_self_training.md``.
    """

    id: str
    box: np.ndarray
    label: int
    score: float


def pseudo_label(model: nn.Module, weak: Sequence[Sample], *, device: Device = None, batch_size: int = 16,
                 score_thresh: float = 0.0) -> List[Optional[PseudoLabel]]:
    """Pseudo ground truth for weak images: the most confident detection whose class equals the image label.

    Parameters
    ----------
    model : the (joint) detector trained so far.
    weak : the weakly labelled images (only ``image_label`` is used; hidden boxes are ignored).
    device, batch_size : see :func:`detect`.
    score_thresh : ignore detections scoring below this (the detector itself already drops those under its
        ``box_score_thresh``, 0.05 by default).

    Returns
    -------
    One entry per weak image, in order: a :class:`PseudoLabel`, or ``None`` when the detector found nothing of
    the image's class (the image then stays weak). A normal image (label 0) never gets one: the detector has no
    box of class "normal".

    Notes
    -----
    Ties in score keep the detector's order (the first of equal scores wins). Taught in ``book/07_self_training.md``.
    """
    if not 0.0 <= float(score_thresh) <= 1.0:
        raise ValueError(f"score_thresh must lie in [0, 1], got {score_thresh!r}")
    weak = list(weak)
    detections = detect(model, weak, device=device, batch_size=batch_size)
    return [best_of_class(s, d, float(score_thresh)) for s, d in zip(weak, detections)]


def best_of_class(sample: Sample, det: Mapping[str, torch.Tensor], score_thresh: float) -> Optional[PseudoLabel]:
    """The pseudo-label of one weak image from its detections (the rule of :func:`pseudo_label`).

    ``det`` holds ``boxes`` [D, 4], ``labels`` [D] and ``scores`` [D] in the image's pixel coordinates. The boxes
    are clipped to the image; the candidates are those of the image's class, scoring at least ``score_thresh`` and
    not empty after clipping; the most confident one (the first of equal scores) is returned, or ``None`` when there
    is no candidate or the image is normal (label 0).
    """
    if sample.image_label == 0:
        return None
    labels = torch.as_tensor(det["labels"]).reshape(-1)
    scores = torch.as_tensor(det["scores"]).reshape(-1).float()
    boxes = torch.as_tensor(det["boxes"]).reshape(-1, 4).float()
    # Boxes are clipped to the image (torchvision's detectors already do); one that is empty after clipping
    # cannot be a training target and is not a candidate.
    boxes = clip_boxes_to_image(boxes, (sample.height, sample.width))
    keep = ((labels == sample.image_label) & (scores >= score_thresh)
            & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    if not bool(keep.any()):
        return None
    idx = keep.nonzero().reshape(-1)
    best = idx[int(torch.argmax(scores[idx]))]  # argmax returns the first maximum
    return PseudoLabel(sample.id, boxes[best].numpy().astype(np.float32), int(sample.image_label),
                       float(scores[best]))


def _check_aligned(pseudo: Sequence[Optional[PseudoLabel]], weak: Sequence[Sample]) -> None:
    if len(pseudo) != len(weak):
        raise ValueError(f"{len(pseudo)} pseudo-labels for {len(weak)} weak images: pass the list "
                         f"pseudo_label() returned for exactly these images")
    for k, (p, s) in enumerate(zip(pseudo, weak)):
        if p is None:
            continue
        if not isinstance(p, PseudoLabel):
            raise TypeError(f"pseudo[{k}]: expected a PseudoLabel or None, got {type(p).__name__}")
        if p.id != s.id:
            raise ValueError(f"pseudo[{k}] belongs to sample {p.id!r} but weak[{k}] is {s.id!r}")
        if p.label != s.image_label:
            raise ValueError(f"pseudo-label of sample {s.id!r} has class {p.label} but the image label is "
                             f"{s.image_label}")
        if not math.isfinite(p.score):
            raise ValueError(f"pseudo-label of sample {s.id!r} has a non-finite score {p.score!r}")


def _ranking(pseudo: Sequence[Optional[PseudoLabel]]) -> List[int]:
    """Indices of the images with a pseudo-label, most confident first (ties: input order)."""
    have = [k for k, p in enumerate(pseudo) if p is not None]
    return sorted(have, key=lambda k: -pseudo[k].score)  # sorted() is stable


def _moved(weak: Sequence[Sample], pseudo: Sequence[Optional[PseudoLabel]], fraction: float,
           per_class: bool) -> List[int]:
    """Indices of the weak images :func:`reconfigure` moves, most confident first (per class when asked)."""
    if not per_class:
        k = min(n_moved(len(weak), fraction), sum(p is not None for p in pseudo))
        return _ranking(pseudo)[:k]
    moved: List[int] = []
    for label in sorted({s.image_label for s in weak}):
        members = [i for i, s in enumerate(weak) if s.image_label == label]
        ranked = _ranking([pseudo[i] for i in members])
        k = min(n_moved(len(members), fraction), len(ranked))
        moved += [members[j] for j in ranked[:k]]
    return sorted(moved, key=lambda i: -pseudo[i].score)


def n_moved(n_weak: int, fraction: float) -> int:
    """How many weak images a fraction asks to move: ``floor(fraction * n_weak + 0.5)`` (half rounds up).

    Fewer are moved when fewer weak images have a pseudo-label (:func:`reconfigure`).

    Notes
    -----
    Taught in ``book/07_self_training.md``.
    """
    f = float(fraction)
    if not 0.0 <= f <= 1.0 or math.isnan(f):
        raise ValueError(f"fraction must lie in [0, 1] (e.g. 0.5 for the paper's 50 %), got {fraction!r}")
    return int(math.floor(f * int(n_weak) + 0.5))


def reconfigure(strong: Sequence[Sample], weak: Sequence[Sample], pseudo: Sequence[Optional[PseudoLabel]],
                fraction: float, *, per_class: bool = False) -> Tuple[List[Sample], List[Sample]]:
    """Move the most confident ``fraction`` of the weak images, with their pseudo-boxes, to the strong set.

    Parameters
    ----------
    strong : the current strong set (kept, first, unchanged).
    weak : the weak set, aligned with ``pseudo``.
    pseudo : :func:`pseudo_label`'s output for ``weak``.
    fraction : share of the *whole* weak set to move, as in the paper's Table IV (``50 + 4974 * 0.5`` strong);
        :func:`n_moved` gives the count. Only images with a pseudo-label can move: when fewer have one, all of
        them move.
    per_class : rank and move each image label separately (the top ``fraction`` of the benign and of the
        malignant weak images), so the strong set keeps the weak set's class balance. The paper ranks all images
        together (``False``, the default); a detector more confident on one class then moves mostly that class.

    Returns
    -------
    (new_strong, new_weak)
        ``new_strong`` = ``strong`` followed by the moved images, most confident first, each a new
        :class:`Sample` (same image, id, patient and image label) whose only box is its pseudo-box.
        ``new_weak`` = the weak images that stay, in their original order and unchanged (hidden boxes kept).
        The hidden ground truth of a moved image stays available in ``weak`` (look it up by id).

    Notes
    -----
    Taught in ``book/07_self_training.md``.
    """
    strong, weak = list(strong), list(weak)
    _check_aligned(pseudo, weak)
    moved = _moved(weak, pseudo, fraction, per_class)
    moved_set = set(moved)
    new_strong = list(strong)
    for i in moved:
        s, p = weak[i], pseudo[i]
        try:
            new_strong.append(Sample(s.image, p.box.reshape(1, 4), np.array([p.label], np.int64), s.image_label,
                                     s.id, s.patient))
        except DataError as exc:
            raise DataError(f"pseudo-box of sample {s.id!r} is not a valid box: {exc}") from None
    new_weak = [s for i, s in enumerate(weak) if i not in moved_set]
    return new_strong, new_weak


@dataclass
class PseudoBoxPrecision:
    """How many pseudo-boxes are right (IoU > threshold with a hidden ground-truth box of the same class).

    Everything is ordered by rank (most confident first).

    Attributes
    ----------
    ids : sample ids of the pseudo-labelled weak images.
    scores : float [N] their confidences.
    ious : float [N] best IoU with a hidden ground-truth box of the pseudo-label's class (0 when none).
    correct : bool [N] ``ious > iou_thresh``.
    n_weak : number of weak images (with or without a pseudo-label).
    iou_thresh : the threshold used.
    """

    ids: List[str]
    scores: np.ndarray
    ious: np.ndarray
    correct: np.ndarray
    n_weak: int
    iou_thresh: float = 0.5

    @property
    def n_labelled(self) -> int:
        """Weak images that have a pseudo-label."""
        return len(self.ids)

    @property
    def overall(self) -> float:
        """Precision over every pseudo-labelled image (``nan`` when there is none)."""
        return float(self.correct.mean()) if self.correct.size else math.nan

    @property
    def precision_at_rank(self) -> np.ndarray:
        """float [N]: precision of the top-k pseudo-boxes, k = 1..N."""
        return np.cumsum(self.correct) / np.arange(1, self.correct.size + 1) if self.correct.size else np.zeros(0)

    def at_fraction(self, fraction: float) -> float:
        """Precision of the pseudo-boxes that :func:`reconfigure` moves for ``fraction`` (``nan`` if none)."""
        k = min(n_moved(self.n_weak, fraction), self.n_labelled)
        return float(self.correct[:k].mean()) if k else math.nan

    def of_ids(self, ids: Sequence[str]) -> float:
        """Precision over the pseudo-boxes of the given sample ids (e.g. the images a reconfiguration moved)."""
        index = {i: k for k, i in enumerate(self.ids)}
        missing = [i for i in ids if i not in index]
        if missing:
            raise KeyError(f"no pseudo-box for sample(s) {missing[:3]} ({len(missing)} in all)")
        picked = [index[i] for i in ids]
        return float(self.correct[picked].mean()) if picked else math.nan

    def as_dict(self, fractions: Sequence[float] = (0.5, 0.75)) -> Dict[str, Any]:
        """JSON-friendly summary: overall precision, precision of each moved fraction, counts."""
        def f(x: float) -> Optional[float]:
            return None if math.isnan(x) else float(x)
        return {"overall": f(self.overall), "n_weak": int(self.n_weak), "n_pseudo_labelled": self.n_labelled,
                "iou_thresh": self.iou_thresh,
                "at_fraction": {f"{q:g}": f(self.at_fraction(q)) for q in fractions}}

    def figure(self, fractions: Sequence[float] = (0.5, 0.75)):
        """The precision-vs-rank curve (:func:`wsbus.viz.detections.plot_precision_vs_rank`)."""
        return plot_precision_vs_rank(self.scores, self.correct, fractions=fractions)


def pseudo_box_precision(pseudo: Sequence[Optional[PseudoLabel]], weak: Sequence[Sample],
                         iou_thresh: float = 0.5) -> PseudoBoxPrecision:
    """Precision of pseudo-boxes against the weak images' hidden ground truth, overall and against rank.

    A pseudo-box is correct when its IoU (:func:`torchvision.ops.box_iou`) with some hidden ground-truth box of
    the same class is greater than ``iou_thresh``; images without a pseudo-label are not counted.

    Parameters
    ----------
    pseudo : :func:`pseudo_label`'s output for ``weak``.
    weak : the weak samples *with their hidden boxes* (as :func:`wsbus.data.split` returns them).
    iou_thresh : 0.5, as CorLoc.

    Returns
    -------
    :class:`PseudoBoxPrecision`

    Raises
    ------
    ValueError
        When a pseudo-labelled weak sample has no hidden boxes (``boxes is None``): the data cannot measure it.

    Notes
    -----
    Taught in ``book/07_self_training.md``.
    """
    if not 0.0 <= float(iou_thresh) < 1.0:
        raise ValueError(f"iou_thresh must lie in [0, 1), got {iou_thresh!r}")
    weak = list(weak)
    _check_aligned(pseudo, weak)
    ids, scores, ious = [], [], []
    for i in _ranking(pseudo):
        s, p = weak[i], pseudo[i]
        if s.boxes is None:
            raise ValueError(f"weak sample {s.id!r} has no hidden ground-truth boxes, so its pseudo-box cannot be "
                             f"checked; keep the boxes of weak samples (wsbus.data.split does) to measure precision")
        same = s.labels == p.label
        if same.any():
            iou = box_iou(torch.from_numpy(p.box.reshape(1, 4)).double(),
                          torch.from_numpy(s.boxes[same]).double())
            best = float(iou.max())
        else:
            best = 0.0
        ids.append(s.id)
        scores.append(p.score)
        ious.append(best)
    ious_a = np.asarray(ious, dtype=np.float64)
    return PseudoBoxPrecision(ids, np.asarray(scores, dtype=np.float64), ious_a, ious_a > float(iou_thresh),
                              len(weak), float(iou_thresh))


def top_class_accuracy(detections: Sequence[Mapping[str, torch.Tensor]], samples: Sequence[Sample]) -> float:
    """The share of benign and malignant images whose most confident detection has the image's class (an image
    without any detection counts as wrong); ``nan`` without such images."""
    hits = []
    for det, s in zip(detections, samples):
        if s.image_label == 0:
            continue
        scores = torch.as_tensor(det["scores"]).reshape(-1)
        hits.append(bool(scores.numel()) and int(torch.as_tensor(det["labels"]).reshape(-1)[int(scores.argmax())])
                    == s.image_label)
    return float(np.mean(hits)) if hits else math.nan
