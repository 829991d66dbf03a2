"""Teachers that annotate the weak images of each training step (ours, beyond the paper; labelled as such).

Both are :class:`wsbus.engine.EMATeacher` hooks (an exponential moving average of the student, or a frozen model)
passed to a :class:`wsbus.engine.Trainer` as ``hooks=[...]``; in every step, before the forward, they look at the
weak images of the mini-batch:

* :class:`MoITeacher` chooses each weak image's **mass of interest** with the teacher's scores instead of the
  head being trained, so that the MIL loss cannot reinforce its own mistakes (a guard against the drift of the
  MoI off the mass);
* :class:`PseudoBoxTeacher` turns each weak image into a **pseudo-labelled strong image** (online self-training,
  as Unbiased Teacher, Soft Teacher and Omni-DETR): the teacher's detections of the image's labelled class above a
  threshold are its boxes; when none passes, the single most confident one of that class is forced (Omni-DETR's
  tag filter); an image whose class the teacher does not detect at all stays weak. Options: keep the MIL loss on
  pseudo-labelled images, ignore proposals that only partly overlap a pseudo-box (PCL), weight pseudo-boxes by
  the teacher's confidence, and augment the student's view of those images strongly (weak-to-strong).
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn
from torchvision import tv_tensors

from .data.transforms import apply
from .engine import EMATeacher
from .mil import select_moi_batch
from .models import is_weak_target

__all__ = ["MoITeacher", "PseudoBoxTeacher", "tag_filter"]

logger = logging.getLogger("wsbus.teachers")


def _weak_positions(targets: List[Dict[str, Any]]) -> List[int]:
    return [i for i, t in enumerate(targets) if is_weak_target(t)]


class MoITeacher(EMATeacher):
    """Chooses the mass of interest of every weak image with a teacher (ours).

    The teacher scores the weak image's candidates (its ``weak_proposals`` most object-like proposals, as training
    would) and applies the rule of the image's label (the student's rule map); the chosen box goes into the weak
    target as ``"moi_box"``, and the student's MIL loss is computed on the student's logits for that box.

    Parameters
    ----------
    decay : EMA decay of the teacher (1: frozen).
    model : the teacher's starting weights (e.g. the strong-only model); default a copy of the student.
    min_confidence : a weak image whose chosen region the teacher is less confident about than this gets no MIL loss
        in that step (``mil_weight`` 0): only confident masses of interest teach the student.
    confidence : what the gate reads: ``"label"`` (the teacher's probability of the image's class) or ``"abnormal"``
        (one minus its probability of normal tissue, which does not depend on the benign/malignant call).
    regress : the mass of interest is the teacher's regressed box for the image's class around the chosen proposal
        (the box its head would output), instead of the proposal itself.
    """

    def __init__(self, decay: float = 0.999, model: Optional[nn.Module] = None, *, min_confidence: float = 0.0,
                 confidence: str = "label", regress: bool = False) -> None:
        super().__init__(decay, model)
        if not 0.0 <= float(min_confidence) <= 1.0:
            raise ValueError(f"min_confidence must lie in [0, 1], got {min_confidence!r}")
        if confidence not in ("label", "abnormal"):
            raise ValueError(f"confidence must be 'label' or 'abnormal', got {confidence!r}")
        self.min_confidence, self.confidence, self.regress = float(min_confidence), confidence, bool(regress)
        self.passed = self.seen = 0

    @torch.no_grad()
    def before_forward(self, trainer: Any, images: List[Tensor], targets: List[Dict[str, Any]]):
        weak = [i for i in _weak_positions(targets) if "moi_box" not in targets[i]]
        if not weak:
            return images, targets
        heads = trainer.model.roi_heads
        triples = self.model.proposal_predictions([images[i] for i in weak], weak=True)
        labels = torch.stack([torch.as_tensor(targets[i]["image_label"]).reshape(()) for i in weak])
        index = select_moi_batch([lg.float() for _, lg, _ in triples],
                                 heads.moi_rules.rule_ids(labels.to(triples[0][1].device)), by=heads.moi_by)
        targets = list(targets)
        for i, (boxes, lg, regressed), k, label in zip(weak, triples, index.tolist(), labels.tolist()):
            box = regressed[k, label] if self.regress else boxes[k]
            if self.regress and not bool(box[2] > box[0]) or self.regress and not bool(box[3] > box[1]):
                box = boxes[k]  # a regressed box clipped to nothing at the border: the proposal itself
            targets[i] = {**targets[i], "moi_box": box}
            if self.min_confidence > 0:
                p = torch.softmax(lg[k].float(), dim=0)
                confident = float(1.0 - p[0] if self.confidence == "abnormal" else p[label]) >= self.min_confidence
                targets[i]["mil_weight"] = 1.0 if confident else 0.0
                self.passed += int(confident)
            self.seen += 1
        return images, targets

    def state_dict(self) -> Optional[Dict[str, Any]]:
        state = super().state_dict()
        if state is not None:
            state["counts"] = {"passed": self.passed, "seen": self.seen}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        counts = state.get("counts") or {}
        self.passed, self.seen = int(counts.get("passed", 0)), int(counts.get("seen", 0))


def tag_filter(detection: Mapping[str, Tensor], label: int, score_thresh: float,
               max_boxes: Optional[int] = None) -> Tuple[Tensor, Tensor, bool]:
    """The pseudo-boxes of one weak image from its teacher's detections (Omni-DETR's tag filter): the detections of
    the image's class ``label`` scoring at least ``score_thresh`` (the ``max_boxes`` most confident), else the single
    most confident detection of that class. Returns ``(boxes [K, 4], scores [K], forced)``; K = 0 when the teacher
    detects nothing of that class."""
    keep = detection["labels"] == label
    boxes, scores = detection["boxes"][keep], detection["scores"][keep]
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, scores = boxes[order], scores[order]
    confident = scores >= score_thresh
    if bool(confident.any()):
        boxes, scores = boxes[confident], scores[confident]
        if max_boxes is not None:
            boxes, scores = boxes[:max_boxes], scores[:max_boxes]
        return boxes, scores, False
    return boxes[:1], scores[:1], bool(scores.numel())


class PseudoBoxTeacher(EMATeacher):
    """Online self-training: the teacher's tag-filtered detections become the boxes of the weak images (ours).

    Parameters
    ----------
    decay : EMA decay of the teacher (1: frozen).
    model : the teacher's starting weights; default a copy of the student (itself, e.g., the joint model).
    score_thresh : detections of the image's class at or above this become pseudo-boxes (else the best is forced).
    max_boxes : at most this many pseudo-boxes per image (None: all that pass).
    keep_mil : also train the MIL loss of the pseudo-labelled image's mass of interest on its image label.
    ignore_iou : proposals overlapping a pseudo-box by IoU above this (but below the foreground threshold) are
        ignored instead of labelled background (PCL's rule); None labels them background as for real boxes.
    weight_by_score : weight the RoIs matched to a pseudo-box by the teacher's confidence in it.
    class_weights : a weight per class (``{1: w_benign, 2: w_malignant}``) multiplying its pseudo-boxes' RoI weights,
        e.g. inverse class frequencies so that both classes teach the head as much.
    augment : a box-aware transform ``(image, target) -> (image, target)`` applied to the student's view of each
        pseudo-labelled image (e.g. :func:`wsbus.data.ultrasound_augmentation`); None: the same view as the teacher.

    Attributes
    ----------
    counts : per class (1 benign, 2 malignant), how many weak images got confident pseudo-boxes (``"confident"``),
        a forced one (``"forced"``) or none and stayed weak (``"none"``), over the run.

    Taught in ``book/07_self_training.md``.
    """

    def __init__(self, decay: float = 0.999, model: Optional[nn.Module] = None, *, score_thresh: float = 0.7,
                 max_boxes: Optional[int] = 1, keep_mil: bool = False, ignore_iou: Optional[float] = None,
                 weight_by_score: bool = False, class_weights: Optional[Mapping[int, float]] = None,
                 augment: Optional[Callable] = None) -> None:
        super().__init__(decay, model)
        if not 0.0 <= float(score_thresh) <= 1.0:
            raise ValueError(f"score_thresh must lie in [0, 1], got {score_thresh!r}")
        if ignore_iou is not None and not 0.0 <= float(ignore_iou) < 0.5:
            raise ValueError(f"ignore_iou must lie in [0, 0.5) or be None, got {ignore_iou!r}")
        self.score_thresh, self.max_boxes = float(score_thresh), max_boxes
        self.keep_mil, self.ignore_iou = bool(keep_mil), ignore_iou
        self.weight_by_score, self.augment = bool(weight_by_score), augment
        self.class_weights = None if class_weights is None else {int(k): float(v) for k, v in class_weights.items()}
        self.counts: Dict[int, Counter] = {1: Counter(), 2: Counter()}

    @torch.no_grad()
    def before_forward(self, trainer: Any, images: List[Tensor], targets: List[Dict[str, Any]]):
        weak = [i for i in _weak_positions(targets) if int(targets[i]["image_label"]) > 0]
        if not weak:
            return images, targets
        detections = self.model([images[i] for i in weak])
        images, targets = list(images), list(targets)
        for i, det in zip(weak, detections):
            label = int(targets[i]["image_label"])
            boxes, scores, forced = tag_filter(det, label, self.score_thresh, self.max_boxes)
            self.counts.setdefault(label, Counter())["none" if not len(boxes) else "forced" if forced
                                                     else "confident"] += 1
            if not len(boxes):
                continue  # the teacher does not see this class here: the image stays weak (MIL)
            images[i], boxes = self._student_view(images[i], boxes)
            target: Dict[str, Any] = {"boxes": boxes, "labels": torch.full((len(boxes),), label, dtype=torch.int64,
                                                                            device=boxes.device),
                                      "image_label": targets[i]["image_label"]}
            if self.weight_by_score or self.class_weights is not None:
                w = scores.float() if self.weight_by_score else torch.ones_like(scores, dtype=torch.float32)
                target["box_weights"] = w * (self.class_weights or {}).get(label, 1.0)
            if self.ignore_iou is not None:
                target["ignore_iou"] = self.ignore_iou
            if self.keep_mil:
                target["mil"] = True
            targets[i] = target
        return images, targets

    def _student_view(self, image: Tensor, boxes: Tensor) -> Tuple[Tensor, Tensor]:
        if self.augment is None:
            return image, boxes
        h, w = image.shape[-2:]
        out, target = apply(self.augment, image, {"boxes": tv_tensors.BoundingBoxes(
            boxes, format="XYXY", canvas_size=(h, w))})
        new = target["boxes"].as_subclass(Tensor)
        valid = (new[:, 2] > new[:, 0]) & (new[:, 3] > new[:, 1])
        return (out.as_subclass(Tensor), new[valid]) if bool(valid.all()) else (image, boxes)

    def after_train(self, trainer: Any) -> None:
        for label, name in ((1, "benign"), (2, "malignant")):
            c = self.counts.get(label, Counter())
            seen = sum(c.values())
            if seen and c["none"] == seen:
                trainer.log(f"the teacher gave no pseudo-box to any of the {seen} {name} weak image(s) it saw: they "
                            f"stayed weak (MIL only)")
            elif c["none"]:
                trainer.log(f"{c['none']} of {seen} {name} weak image(s) got no pseudo-box and stayed weak")

    def state_dict(self) -> Optional[Dict[str, Any]]:
        state = super().state_dict()
        if state is not None:
            state["counts"] = {str(k): dict(v) for k, v in self.counts.items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.counts = {int(k): Counter(v) for k, v in (state.get("counts") or {}).items()}

    def summary(self) -> Dict[str, Dict[str, int]]:
        """The counts as plain data: ``{"benign": {"confident": n, "forced": n, "none": n}, "malignant": ...}``."""
        return {name: {k: int(self.counts.get(label, Counter())[k]) for k in ("confident", "forced", "none")}
                for label, name in ((1, "benign"), (2, "malignant"))}
