"""Self-training: pseudo-boxes for weakly labelled images, reconfigured training sets, retraining (Table IV).

Taught in ``book/07_self_training.md``.

Shin et al. (TMI 2019, Sec. IV-D, Table IV) grow the strongly supervised set without annotating anything:

1. train a joint model on few strong (boxed) and many weak (image-label) images;
2. run it on every weak image; the *pseudo ground truth* of an image is its most confident detection whose class
   equals the image label (:func:`pseudo_label`; no such detection: the image stays weak);
3. rank the weak images by that confidence and move the top fraction ``q`` (paper: 50 %, 75 %) to the strong set
   with their pseudo-boxes, the rest stay weak (:func:`reconfigure`);
4. retrain on the reconfigured sets and compare CorLoc before and after (:func:`self_train`).

How good the pseudo-boxes are is measured against the weak images' hidden ground truth when the data has it
(:func:`pseudo_box_precision`: IoU > 0.5 with a ground-truth box of the same class), overall and as a function
of the rank, which is what decides how large ``q`` may be.

**Retraining from scratch.** The paper "retrains" with the reconfigured sets; :func:`self_train` re-initialises
the network (with the same initial weights as the first model) and trains it for the same number of steps, so
that "after" differs from "before" only by the training sets. ``retrain="finetune"`` continues from the initial
model instead (cheaper; it keeps the initial model's mistakes as a starting point).
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou, clip_boxes_to_image

from .data.formats import DataError, Sample
from .distributed import model_device
from .engine import Trainer
from .evaluate import MethodResult, corloc, results_table, to_json_methods
from .inference import detect
from .seeding import seeded
from .teachers import PseudoBoxTeacher
from .data.transforms import ultrasound_augmentation
from .viz.detections import plot_precision_vs_rank

__all__ = ["PseudoLabel", "PseudoBoxPrecision", "SelfTrainingResult", "MeanTeacherSettings", "PROCEDURES",
           "pseudo_label", "reconfigure", "n_moved", "pseudo_box_precision", "top_class_accuracy", "self_train"]

Device = Union[str, torch.device, None]


# ---------------------------------------------------------------------------------------------------------
# Pseudo-labels
# ---------------------------------------------------------------------------------------------------------
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
    return [_best_of_class(s, d, float(score_thresh)) for s, d in zip(weak, detections)]


def _best_of_class(sample: Sample, det: Mapping[str, torch.Tensor], score_thresh: float) -> Optional[PseudoLabel]:
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


# ---------------------------------------------------------------------------------------------------------
# Pseudo-box precision
# ---------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------
# The whole loop
# ---------------------------------------------------------------------------------------------------------
#: The self-training procedures: the paper's offline one and the online mean teacher (ours).
PROCEDURES = ("paper", "mean_teacher")


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

    def __post_init__(self) -> None:
        if self.evaluate not in ("teacher", "student"):
            raise ValueError(f"evaluate must be 'teacher' or 'student', got {self.evaluate!r}")

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
                                augment=ultrasound_augmentation() if self.augment else None)


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


@dataclass
class SelfTrainingResult:
    """What :func:`self_train` produced: Table IV's columns plus everything behind them.

    Attributes
    ----------
    methods : :class:`wsbus.evaluate.MethodResult` per model: ``"initial"``, then ``"retrained_<q>%"`` (the paper's
        procedure; ``..._round<r>`` for later rounds) or ``"mean_teacher"``.
    pseudo : the pseudo-labels of the weak set (aligned with it) by the model the result ends with (the paper's:
        by the initial model, from which the first moves were made).
    precision : :class:`PseudoBoxPrecision` of ``pseudo``, or ``None`` when the weak set has no hidden boxes.
    class_accuracy : :func:`top_class_accuracy` of that model on the weak set.
    procedure : ``"paper"`` or ``"mean_teacher"``.
    models, histories, detections : by method name (``"initial"`` has no history when it was passed in).
    sets : ``(n_strong, n_weak)`` by method name.
    moved : ids of the weak images moved to the strong set, by retrained method name (most confident first).
    teacher : the mean teacher's pseudo-labelling counts per class (:meth:`wsbus.teachers.PseudoBoxTeacher.summary`).
    seconds : wall-clock seconds spent per method (training + evaluation) and on pseudo-labelling.
    """

    methods: List[Any]
    pseudo: List[Optional[PseudoLabel]]
    precision: Optional[PseudoBoxPrecision]
    class_accuracy: float = math.nan
    procedure: str = "paper"
    models: Dict[str, nn.Module] = field(default_factory=dict, repr=False)
    histories: Dict[str, Any] = field(default_factory=dict, repr=False)
    detections: Dict[str, List[Dict[str, torch.Tensor]]] = field(default_factory=dict, repr=False)
    sets: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    moved: Dict[str, List[str]] = field(default_factory=dict)
    teacher: Optional[Dict[str, Dict[str, int]]] = None
    seconds: Dict[str, float] = field(default_factory=dict)

    def table(self, fmt: str = "markdown") -> str:
        """The Table IV-shaped table (:func:`wsbus.evaluate.results_table` with ``kind="IV"``)."""
        return results_table(self.methods, kind="IV", fmt=fmt)

    def to_json(self, fractions: Optional[Sequence[float]] = None) -> Dict[str, Any]:
        """``{"methods": [...], "procedure", "pseudo_box_precision": {...} | None, "class_accuracy", "teacher"}``
        in ``results.json``'s format."""
        qs = fractions if fractions is not None else sorted({float(m.name.split("_")[1].rstrip("%")) / 100
                                                             for m in self.methods if m.name.startswith("retrained_")})
        prec = None
        if self.precision is not None:
            prec = self.precision.as_dict(qs)
            prec["moved"] = {name: {"n": len(ids), "precision": None if not ids else self.precision.of_ids(ids)}
                             for name, ids in self.moved.items()}
        return {"methods": to_json_methods(self.methods), "procedure": self.procedure,
                "pseudo_box_precision": prec,
                "class_accuracy": None if math.isnan(self.class_accuracy) else self.class_accuracy,
                "teacher": self.teacher}


def _method_name(fraction: float, round_: int = 1) -> str:
    return f"retrained_{100 * float(fraction):g}%" + (f"_round{round_}" if round_ > 1 else "")


class _Loop:
    """The pieces both procedures share: train a model on given sets, evaluate it on the test set."""

    def __init__(self, test, result, device, seed, kwargs, on_step, out_dir, batch_size, n_boot):
        self.test, self.result, self.device, self.seed = test, result, device, seed
        self.kwargs, self.on_step, self.out_dir = kwargs, on_step, out_dir
        self.batch_size, self.n_boot = batch_size, n_boot

    def train(self, name: str, model: nn.Module, s: List[Sample], w: List[Sample], n_steps: int,
              hooks: Sequence[Any] = ()) -> nn.Module:
        mode = "joint" if w else "strong"
        kw = dict(self.kwargs)
        if mode == "strong":
            for key in ("alpha", "mixing", "n_weak"):
                kw.pop(key, None)
        on_step = self.on_step
        callbacks = [] if on_step is None else [lambda trainer, record: on_step(name, trainer, record)]
        run_dir = None if self.out_dir is None else os.path.join(self.out_dir, name.replace("%", "pct"))
        kw.setdefault("checkpoint_every", max(1, n_steps // 10))
        trainer = Trainer(model, s, w if w else None, mode=mode, steps=n_steps, seed=self.seed, device=self.device,
                          callbacks=callbacks, out_dir=run_dir, hooks=list(hooks), **kw)
        self.result.histories[name] = trainer.fit(resume=run_dir is not None)
        return trainer.model

    def evaluate(self, name: str, model: nn.Module, n_s: int, n_w: int, started: float) -> None:
        dets = detect(model, self.test, device=self.device, batch_size=self.batch_size)
        r = self.result
        r.methods.append(MethodResult.from_corloc(name, corloc(dets, self.test), n_strong=n_s, n_weak=n_w,
                                                  n_boot=self.n_boot, seed=0, supervision="Weak & Semi"))
        r.detections[name], r.models[name], r.sets[name] = dets, model, (n_s, n_w)
        r.seconds[name] = time.perf_counter() - started

    def label_weak(self, model: nn.Module, weak: List[Sample], score_thresh: float) -> None:
        """The pseudo-labels, their precision and the top-class accuracy of ``model`` on the weak set."""
        t0 = time.perf_counter()
        dets = detect(model, weak, device=self.device, batch_size=self.batch_size)
        r = self.result
        r.pseudo = [_best_of_class(s, d, float(score_thresh)) for s, d in zip(weak, dets)]
        r.precision = pseudo_box_precision(r.pseudo, weak) if all(s.boxes is not None for s in weak) else None
        r.class_accuracy = top_class_accuracy(dets, weak)
        r.seconds["pseudo_label"] = r.seconds.get("pseudo_label", 0.0) + time.perf_counter() - t0


def self_train(strong: Sequence[Sample], weak: Sequence[Sample], test: Sequence[Sample], *,
               model_factory: Callable[[], nn.Module], initial: Optional[nn.Module] = None,
               procedure: str = "paper", fractions: Sequence[float] = (0.5, 0.75), steps: int = 1000,
               retrain: str = "scratch", retrain_steps: Optional[int] = None, rounds: int = 1,
               mean_teacher: Optional[MeanTeacherSettings] = None, device: Device = None, batch_size: int = 16,
               score_thresh: float = 0.0, per_class: bool = False, seed: int = 3, init_seed: int = 0,
               trainer_kwargs: Optional[Mapping[str, Any]] = None, n_boot: int = 1000,
               progress: bool = True, on_step: Optional[Callable[[str, Any, Dict[str, Any]], None]] = None,
               out_dir: Union[str, "os.PathLike[str]", None] = None) -> SelfTrainingResult:
    """Self-training (Table IV): from a joint model, pseudo-boxes on the weak images, then more training.

    ``procedure="paper"`` is the paper's offline procedure, exactly: rank the weak images by the joint model's most
    confident detection of their class, move the top fraction with that box to the strong set, retrain (for each
    fraction; ``rounds`` > 1 repeats it from the retrained model). ``procedure="mean_teacher"`` is ours: the
    online procedure of :class:`MeanTeacherSettings`, trained for ``retrain_steps`` steps from the joint model.

    Parameters
    ----------
    strong, weak, test : the training sets (weak samples may keep hidden boxes: they are then used to measure
        pseudo-box precision, never for training) and the test set (with boxes) for CorLoc.
    model_factory : builds a fresh detector, e.g. ``lambda: build_detector("tiny")``; called under a fixed torch
        seed (``init_seed``) so the initial and every retrained model start from the same weights.
    initial : an already trained joint model; when ``None`` one is trained with :class:`wsbus.engine.Trainer`
        (``mode="joint"``) for ``steps`` steps.
    procedure : ``"paper"`` or ``"mean_teacher"`` (:data:`PROCEDURES`).
    fractions : shares of the weak set moved to the strong set (paper: 0.5 and 0.75).
    steps : training steps of the initial model.
    retrain : ``"scratch"`` (the paper: a new model on the reconfigured sets, same initial weights) or
        ``"finetune"`` (continue from a copy of the initial model); the mean teacher always continues.
    retrain_steps : steps of each retraining (default ``steps``).
    rounds : the paper's procedure repeated from each round's retrained model (1: the paper's).
    mean_teacher : settings of the mean teacher (default :class:`MeanTeacherSettings()`).
    device : ``"cpu"``, ``"cuda"``...; default: the initial model's device, else CPU.
    batch_size, score_thresh : for :func:`pseudo_label` and the test-set detections.
    per_class : move the top fraction of each image label separately (:func:`reconfigure`).
    seed : the Trainer's seed (data order, augmentation, sampling).
    trainer_kwargs : more :class:`wsbus.engine.Trainer` arguments (``alpha``, ``lr``, ``batch_strong``, ``batch_weak``,
        ``mixing``, ``transforms``...). With an empty reconfigured weak set the retraining runs in strong mode.
    n_boot : bootstrap resamples of the CorLoc CIs.
    progress : show the Trainer's progress bars.
    on_step : optional ``f(method_name, trainer, record)`` called after every training step (for an outer
        progress bar).
    out_dir : when given, every model trains with checkpoints in ``out_dir/<method name>`` and resumes from them
        (an interrupted self-training continues where it stopped).

    Returns
    -------
    :class:`SelfTrainingResult`; ``result.table()`` is Table IV.

    Taught in ``book/07_self_training.md``.
    """
    if procedure not in PROCEDURES:
        raise ValueError(f"procedure must be one of {PROCEDURES}, got {procedure!r}")
    if retrain not in ("scratch", "finetune"):
        raise ValueError(f"retrain must be 'scratch' or 'finetune', got {retrain!r}")
    if int(rounds) < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds!r}")
    fractions = [float(q) for q in fractions]
    for q in fractions:
        n_moved(1, q)  # validates
    if len(set(fractions)) != len(fractions):
        raise ValueError(f"fractions must be distinct, got {fractions}")
    strong, weak, test = list(strong), list(weak), list(test)
    if not weak:
        raise ValueError("self-training needs weak images to pseudo-label; the weak set is empty")
    if not any(s.image_label > 0 for s in test):
        raise ValueError("the test set has no benign or malignant image: CorLoc is undefined")
    kwargs = dict(trainer_kwargs or {})
    for key in ("mode", "steps", "seed", "device", "callbacks", "out_dir", "hooks"):
        if key in kwargs:
            raise ValueError(f"trainer_kwargs must not set {key!r}; self_train sets it")
    kwargs.setdefault("progress", progress)
    kwargs.setdefault("tensorboard", False)
    device = model_device(initial, device) if initial is not None else torch.device(device or "cpu")
    result = SelfTrainingResult(methods=[], pseudo=[], precision=None, procedure=procedure)
    loop = _Loop(test, result, device, seed, kwargs, on_step, out_dir, batch_size, n_boot)

    t0 = time.perf_counter()
    if initial is None:
        with seeded(init_seed):
            model = model_factory()
        initial = loop.train("initial", model, strong, weak, steps)
    initial.to(device)
    loop.evaluate("initial", initial, len(strong), len(weak), t0)
    retrain_steps = steps if retrain_steps is None else int(retrain_steps)
    if procedure == "mean_teacher":
        _mean_teacher(loop, initial, strong, weak, retrain_steps, mean_teacher or MeanTeacherSettings(),
                      score_thresh)
    else:
        _paper(loop, initial, strong, weak, fractions, retrain_steps, retrain, int(rounds), per_class, score_thresh,
               lambda: _fresh(model_factory, init_seed))
    return result


def _fresh(model_factory: Callable[[], nn.Module], init_seed: int) -> nn.Module:
    with seeded(init_seed):
        return model_factory()


def _paper(loop: _Loop, initial: nn.Module, strong: List[Sample], weak: List[Sample], fractions: List[float],
           steps: int, retrain: str, rounds: int, per_class: bool, score_thresh: float,
           fresh: Callable[[], nn.Module]) -> None:
    """The paper's procedure for each fraction (and each round): rank, move the top fraction, retrain."""
    result = loop.result
    loop.label_weak(initial, weak, score_thresh)
    first_pseudo, first_precision = result.pseudo, result.precision
    for q in fractions:
        labeller = initial
        pseudo = first_pseudo
        for r in range(1, rounds + 1):
            t0 = time.perf_counter()
            name = _method_name(q, r)
            if r > 1:
                loop.label_weak(labeller, weak, score_thresh)
                pseudo = result.pseudo
            new_strong, new_weak = reconfigure(strong, weak, pseudo, q, per_class=per_class)
            result.moved[name] = [x.id for x in new_strong[len(strong):]]
            model = fresh() if retrain == "scratch" else copy.deepcopy(labeller)
            labeller = loop.train(name, model, new_strong, new_weak, steps)
            loop.evaluate(name, labeller, len(new_strong), len(new_weak), t0)
    if rounds > 1:  # the precision reported is that of the first moves, made by the initial model
        result.pseudo, result.precision = first_pseudo, first_precision
        loop.label_weak(initial, weak, score_thresh)


def _mean_teacher(loop: _Loop, initial: nn.Module, strong: List[Sample], weak: List[Sample], steps: int,
                  settings: MeanTeacherSettings, score_thresh: float) -> None:
    """Ours: the student continues from the joint model while its EMA teacher pseudo-labels every weak batch."""
    t0 = time.perf_counter()
    hook = settings.hook(initial, weak)
    student = loop.train("mean_teacher", copy.deepcopy(initial), strong, weak, steps, hooks=[hook])
    final = hook.model if settings.evaluate == "teacher" else student
    loop.result.teacher = hook.summary()
    loop.evaluate("mean_teacher", final, len(strong), len(weak), t0)
    loop.label_weak(final, weak, score_thresh)
