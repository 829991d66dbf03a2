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
  the teacher's confidence, augment the student's view of those images strongly (weak-to-strong), and drop the
  pseudo-boxes whose position the teacher's box head is unsure of (Soft Teacher's box jitter,
  :func:`box_unreliability`).
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torchvision import tv_tensors
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import clip_boxes_to_image

from .data.transforms import apply
from .engine import EMATeacher
from .mil import select_moi_batch
from .models import is_weak_target
from .models.checks import check_images
from .seeding import generator

__all__ = ["MoITeacher", "PseudoBoxTeacher", "tag_filter", "jitter_boxes", "box_unreliability", "refined_boxes",
           "check_box_jitter"]

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

    Taught in ``book/06_joint_training.md``.
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


def check_box_jitter(box_jitter: Optional[float], jitter_samples: int, jitter_scale: float) -> None:
    """Raise ``ValueError`` naming the setting when the box-jitter options of :class:`PseudoBoxTeacher` are invalid:
    ``box_jitter`` None or a finite number >= 0, ``jitter_samples`` an integer >= 2 (a standard deviation needs two
    samples), ``jitter_scale`` a finite number > 0."""
    if box_jitter is not None and (isinstance(box_jitter, bool) or not isinstance(box_jitter, (int, float))
                                   or not math.isfinite(box_jitter) or box_jitter < 0):
        raise ValueError(f"box_jitter must be None (off) or a finite number >= 0 (the largest unreliability kept), "
                         f"got {box_jitter!r}")
    if isinstance(jitter_samples, bool) or not isinstance(jitter_samples, int) or jitter_samples < 2:
        raise ValueError(f"jitter_samples must be an integer >= 2, got {jitter_samples!r}")
    if isinstance(jitter_scale, bool) or not isinstance(jitter_scale, (int, float)) \
            or not math.isfinite(jitter_scale) or jitter_scale <= 0:
        raise ValueError(f"jitter_scale must be a finite number > 0, got {jitter_scale!r}")


def jitter_boxes(boxes: Tensor, samples: int, scale: float, gen: torch.Generator) -> Tensor:
    """``samples`` jittered copies of each box (Soft Teacher's ``aug_box``): every coordinate moved by a Gaussian
    offset of standard deviation ``scale`` times the box's width (x1, x2) or height (y1, y2), sizes under 1 counted
    as 1. The offsets are drawn on the CPU from ``gen`` (``randn(samples, K, 4)``), so they do not depend on the
    device or touch the global random state. ``boxes`` [K, 4] -> [samples, K, 4]."""
    size = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0).repeat(1, 2)
    noise = torch.randn((samples, boxes.shape[0], 4), generator=gen, dtype=torch.float32)
    return boxes[None] + noise.to(device=boxes.device, dtype=boxes.dtype) * (float(scale) * size)[None]


def box_unreliability(refined: Tensor) -> Tensor:
    """Soft Teacher's box unreliability (Xu et al. 2021, Sec. 3.3) from the refined boxes of N jittered copies of K
    boxes, ``refined`` [N, K, 4] -> [K]: the standard deviation (N - 1 in the denominator) of each coordinate over the
    N refinements, divided by the width (x1, x2) or height (y1, y2) of the mean refined box (at least 1), averaged
    over the 4 coordinates. 0 when every copy is refined to the same box; about the jitter's scale when the head
    returns each copy where it was."""
    mean = refined.mean(dim=0)
    size = (mean[:, 2:] - mean[:, :2]).clamp(min=1.0).repeat(1, 2)
    return (refined.std(dim=0) / size).mean(dim=1)


def refined_boxes(model: nn.Module, features: Dict[str, Tensor], image_sizes: Sequence[Tuple[int, int]],
                  boxes: Sequence[Tensor], labels: Sequence[int]) -> List[Tensor]:
    """One pass of the detector's box head over given boxes: for image i, its ``boxes[i]`` [K_i, 4] (in the
    coordinates of the transformed image, ``image_sizes[i]``) go through ``roi_heads.box_roi_pool`` on ``features``,
    ``box_head`` and ``box_predictor``; the regression of class ``labels[i]`` is decoded around each box
    (``box_coder``) and clipped to the image. Returns the refined boxes [K_i, 4] per image."""
    heads = model.roi_heads
    _, regression = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, list(boxes), list(image_sizes))))
    counts = [int(b.shape[0]) for b in boxes]
    decoded = heads.box_coder.decode(regression.float(), [b.float() for b in boxes]).split(counts)
    return [clip_boxes_to_image(d[:, int(label)], size) for d, label, size in zip(decoded, labels, image_sizes)]


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
    box_jitter : None (off) or the largest unreliability a pseudo-box may have (Soft Teacher's box jitter, Xu et al.
        2021, Sec. 3.3): each pseudo-box is jittered ``jitter_samples`` times (:func:`jitter_boxes`, offsets of
        standard deviation ``jitter_scale`` times its width or height), the copies go through the teacher's box head
        around the image's class (:func:`refined_boxes`, one RoI pass per step on the features the detections came
        from), and a box whose :func:`box_unreliability` exceeds ``box_jitter`` is dropped; an image left without a
        pseudo-box stays weak (its weak target, with the MIL loss, as an image whose class the teacher does not
        detect). Soft Teacher keeps such boxes for the classification loss and leaves them out of the box-regression
        loss only; here the class of a pseudo-box is the image label (known) and an image has one pseudo-box
        (``max_boxes=1``), so a box the teacher cannot place is not used at all and the image keeps the supervision
        it has for sure (its image label). The threshold of Soft Teacher's code is 0.02 (with its 0.06 scale).
    jitter_samples, jitter_scale : the number of jittered copies (>= 2; Soft Teacher 10) and their scale (0.06). The
        offsets are drawn from a generator seeded with the step's seed (:func:`wsbus.seeding.generator` of
        ``torch.initial_seed()``, which the Trainer sets per step): the global random state is untouched and a
        resumed run draws the same offsets.

    Attributes
    ----------
    counts : per class (1 benign, 2 malignant), how many weak images got confident pseudo-boxes (``"confident"``),
        a forced one (``"forced"``) or none and stayed weak (``"none"``), over the run; with ``box_jitter``, also how
        many pseudo-boxes the filter dropped (``"unreliable"``) and how many images it left without any, so that they
        stayed weak (``"unreliable_images"``).

    Taught in ``book/07_self_training.md``.
    """

    def __init__(self, decay: float = 0.999, model: Optional[nn.Module] = None, *, score_thresh: float = 0.7,
                 max_boxes: Optional[int] = 1, keep_mil: bool = False, ignore_iou: Optional[float] = None,
                 weight_by_score: bool = False, class_weights: Optional[Mapping[int, float]] = None,
                 augment: Optional[Callable] = None, box_jitter: Optional[float] = None, jitter_samples: int = 10,
                 jitter_scale: float = 0.06) -> None:
        super().__init__(decay, model)
        if not 0.0 <= float(score_thresh) <= 1.0:
            raise ValueError(f"score_thresh must lie in [0, 1], got {score_thresh!r}")
        if ignore_iou is not None and not 0.0 <= float(ignore_iou) < 0.5:
            raise ValueError(f"ignore_iou must lie in [0, 0.5) or be None, got {ignore_iou!r}")
        check_box_jitter(box_jitter, jitter_samples, jitter_scale)
        self.score_thresh, self.max_boxes = float(score_thresh), max_boxes
        self.keep_mil, self.ignore_iou = bool(keep_mil), ignore_iou
        self.weight_by_score, self.augment = bool(weight_by_score), augment
        self.class_weights = None if class_weights is None else {int(k): float(v) for k, v in class_weights.items()}
        self.box_jitter = None if box_jitter is None else float(box_jitter)
        self.jitter_samples, self.jitter_scale = int(jitter_samples), float(jitter_scale)
        self.counts: Dict[int, Counter] = {1: Counter(), 2: Counter()}

    @torch.no_grad()
    def before_forward(self, trainer: Any, images: List[Tensor], targets: List[Dict[str, Any]]):
        weak = [i for i in _weak_positions(targets) if int(targets[i]["image_label"]) > 0]
        if not weak:
            return images, targets
        detections, context = self._detect([images[i] for i in weak])
        picked = []
        for i, det in zip(weak, detections):
            label = int(targets[i]["image_label"])
            boxes, scores, forced = tag_filter(det, label, self.score_thresh, self.max_boxes)
            self.counts.setdefault(label, Counter())["none" if not len(boxes) else "forced" if forced
                                                     else "confident"] += 1
            picked.append((label, boxes, scores))
        if self.box_jitter is not None:
            picked = self._reliable(picked, context)
        images, targets = list(images), list(targets)
        for i, (label, boxes, scores) in zip(weak, picked):
            if not len(boxes):
                continue  # the teacher does not see this class here (or cannot place it): the image stays weak (MIL)
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

    def _detect(self, images: List[Tensor]) -> Tuple[List[Dict[str, Tensor]], Any]:
        """The teacher's detections of ``images`` (input coordinates), and, with ``box_jitter``, what the box head
        pass needs: ``(features, transformed image sizes, input image sizes)``, from the same backbone pass. The
        stages are the detector's eval forward (torchvision's ``GeneralizedRCNN``), so the detections are the same
        as ``model(images)``'s."""
        if self.box_jitter is None:
            return self.model(images), None
        model = self.model
        images = check_images(images)
        originals = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, _ = model.transform(images, None)
        features = model.features(image_list.tensors)
        proposals, _ = model.rpn(image_list, features, None)
        detections, _ = model.roi_heads(features, proposals, image_list.image_sizes, None)
        detections = model.transform.postprocess(detections, image_list.image_sizes, originals)
        return detections, (features, image_list.image_sizes, originals)

    def _reliable(self, picked: List[Tuple[int, Tensor, Tensor]], context: Any) -> List[Tuple[int, Tensor, Tensor]]:
        """``picked`` (label, pseudo-boxes, scores per weak image) without the boxes whose unreliability exceeds
        ``box_jitter``; counts what it drops."""
        if not any(len(boxes) for _, boxes, _ in picked):
            return picked
        features, sizes, originals = context
        gen = generator(torch.initial_seed(), "box_jitter")
        inside = [resize_boxes(boxes.float(), orig, size)  # the transformed image's coordinates, as the features
                  for (_, boxes, _), size, orig in zip(picked, sizes, originals)]
        jittered = [jitter_boxes(b, self.jitter_samples, self.jitter_scale, gen) for b in inside]
        refined = refined_boxes(self.model, features, sizes, [j.reshape(-1, 4) for j in jittered],
                                [label for label, _, _ in picked])
        out = []
        for (label, boxes, scores), r in zip(picked, refined):
            if not len(boxes):
                out.append((label, boxes, scores))
                continue
            keep = box_unreliability(r.reshape(self.jitter_samples, -1, 4)) <= self.box_jitter
            dropped = int(keep.numel() - keep.sum())
            counts = self.counts.setdefault(label, Counter())
            counts["unreliable"] += dropped
            counts["unreliable_images"] += int(dropped == keep.numel())
            out.append((label, boxes[keep], scores[keep]))
        return out

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
            seen = c["confident"] + c["forced"] + c["none"]
            weak = c["none"] + c["unreliable_images"]
            why = f" ({c['unreliable_images']} for unreliable boxes)" if c["unreliable_images"] else ""
            if seen and weak == seen:
                trainer.log(f"the teacher gave no pseudo-box to any of the {seen} {name} weak image(s) it saw: they "
                            f"stayed weak (MIL only){why}")
            elif weak:
                trainer.log(f"{weak} of {seen} {name} weak image(s) got no pseudo-box and stayed weak{why}")
            if c["unreliable"]:
                limit = "" if self.box_jitter is None else f" (above {self.box_jitter:g})"
                trainer.log(f"the box-jitter filter dropped {c['unreliable']} {name} pseudo-box(es) as "
                            f"unreliable{limit}")

    def state_dict(self) -> Optional[Dict[str, Any]]:
        state = super().state_dict()
        if state is not None:
            state["counts"] = {str(k): dict(v) for k, v in self.counts.items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.counts = {int(k): Counter(v) for k, v in (state.get("counts") or {}).items()}

    def summary(self) -> Dict[str, Dict[str, int]]:
        """The counts as plain data: ``{"benign": {"confident": n, "forced": n, "none": n}, "malignant": ...}``, with
        ``"unreliable"`` and ``"unreliable_images"`` too when ``box_jitter`` is on."""
        keys = ("confident", "forced", "none")
        if self.box_jitter is not None:
            keys += ("unreliable", "unreliable_images")
        return {name: {k: int(self.counts.get(label, Counter())[k]) for k in keys}
                for label, name in ((1, "benign"), (2, "malignant"))}
