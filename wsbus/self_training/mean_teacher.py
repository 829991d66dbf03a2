"""Online self-training with a mean teacher (ours, beyond the paper; labelled as such): the student continues from
the joint model while an exponential moving average of it, the teacher, turns the weak images of every step into
pseudo-labelled ones (:class:`wsbus.teachers.PseudoBoxTeacher`). :class:`MeanTeacherSettings` configures it,
:func:`run_mean_teacher` runs it.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

from torch import nn

from ..data.formats import Sample
from ..data.transforms import ultrasound_augmentation
from ..teachers import PseudoBoxTeacher, check_box_jitter
from .loop import SelfTrainingLoop

__all__ = ["MeanTeacherSettings", "run_mean_teacher"]


@dataclass(frozen=True)
class MeanTeacherSettings:
    """The online self-training procedure (ours): a student starts from the joint model and an exponential moving
    average of it, the teacher, turns the weak images of every step into pseudo-labelled ones
    (:class:`wsbus.teachers.PseudoBoxTeacher`).

    Attributes
    ----------
    decay : the teacher's EMA decay per step.
    score_thresh : the teacher's detections of the image's class at or above this are pseudo-boxes; when none
        passes, the most confident one is forced (Omni-DETR's tag filter).
    max_boxes : pseudo-boxes per image.
    keep_mil : also keep the MIL loss on pseudo-labelled images.
    ignore_iou : ignore, instead of labelling background, proposals that overlap a pseudo-box by more than this
        (PCL's rule); None: background, as for real boxes.
    weight_by_score : weight the RoIs matched to a pseudo-box by the teacher's confidence.
    augment : the student sees a strongly augmented view of each pseudo-labelled image
        (:func:`wsbus.data.ultrasound_augmentation`), the teacher the plain one.
    evaluate : ``"teacher"`` (the EMA model, as Unbiased Teacher reports) or ``"student"`` is the result.
    balance_classes : weight the RoIs of each class's pseudo-boxes by the inverse frequency of the class among the
        weak images (mean weight 1), as the MIL loss weights its classes; otherwise the majority class's pseudo-boxes
        dominate the head's loss.
    box_jitter : None (off, the default) or the largest unreliability a pseudo-box may have: Soft Teacher's box
        jitter (Xu et al. 2021, Sec. 3.3) drops the pseudo-boxes the teacher's box head cannot place consistently,
        and an image left without one stays weak (see :class:`wsbus.teachers.PseudoBoxTeacher`, which says which
        variant of Soft Teacher's rule this is and why). The teacher's summary then counts the boxes dropped
        (``"unreliable"``) and the images they left weak (``"unreliable_images"``).
    jitter_samples : jittered copies per pseudo-box (>= 2; Soft Teacher: 10).
    jitter_scale : the jitter's standard deviation as a fraction of the box's width / height (Soft Teacher: 0.06).

    Taught in ``book/07_self_training.md``.
    """

    decay: float = 0.999
    score_thresh: float = 0.7
    max_boxes: int = 1
    keep_mil: bool = False
    ignore_iou: Optional[float] = None
    weight_by_score: bool = False
    augment: bool = False
    evaluate: str = "teacher"
    balance_classes: bool = False
    box_jitter: Optional[float] = None
    jitter_samples: int = 10
    jitter_scale: float = 0.06

    def __post_init__(self) -> None:
        if self.evaluate not in ("teacher", "student"):
            raise ValueError(f"evaluate must be 'teacher' or 'student', got {self.evaluate!r}")
        check_box_jitter(self.box_jitter, self.jitter_samples, self.jitter_scale)

    def hook(self, initial: nn.Module, weak: Sequence[Sample] = ()) -> PseudoBoxTeacher:
        """The :class:`wsbus.teachers.PseudoBoxTeacher` of these settings, starting from ``initial`` (``weak``: the
        weak images, whose classes set the balancing weights)."""
        weights = None
        if self.balance_classes:
            counts = {c: sum(s.image_label == c for s in weak) for c in (1, 2)}
            present = [c for c in counts if counts[c]]
            weights = {c: sum(counts.values()) / (len(present) * counts[c]) for c in present}
        return PseudoBoxTeacher(self.decay, copy.deepcopy(initial), score_thresh=self.score_thresh,
                                max_boxes=self.max_boxes, keep_mil=self.keep_mil, ignore_iou=self.ignore_iou,
                                weight_by_score=self.weight_by_score, class_weights=weights,
                                augment=ultrasound_augmentation() if self.augment else None,
                                box_jitter=self.box_jitter, jitter_samples=self.jitter_samples,
                                jitter_scale=self.jitter_scale)


def run_mean_teacher(loop: SelfTrainingLoop, initial: nn.Module, strong: List[Sample], weak: List[Sample], steps: int,
                     settings: MeanTeacherSettings, score_thresh: float) -> None:
    """Ours: the student continues from the joint model while its EMA teacher pseudo-labels every weak batch.

    ``loop.result`` gets the method ``"mean_teacher"`` (the teacher or the student, as ``settings.evaluate`` says),
    the teacher's counts (``teacher``: :meth:`wsbus.teachers.PseudoBoxTeacher.summary`), and the pseudo-labels,
    precision and top-class accuracy of the final model on the weak set (``score_thresh`` as in
    :func:`wsbus.self_training.pseudo_label`).
    """
    t0 = time.perf_counter()
    hook = settings.hook(initial, weak)
    student = loop.train("mean_teacher", copy.deepcopy(initial), strong, weak, steps, hooks=[hook])
    final = hook.model if settings.evaluate == "teacher" else student
    loop.result.teacher = hook.summary()
    loop.evaluate("mean_teacher", final, len(strong), len(weak), t0)
    loop.label_weak(final, weak, score_thresh)
