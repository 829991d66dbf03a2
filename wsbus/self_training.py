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

__all__ = [
    "PseudoLabel", "PseudoBoxPrecision", "SelfTrainingResult", "detect", "pseudo_label", "reconfigure",
    "n_moved", "pseudo_box_precision", "self_train", "self_train_from_checkpoint",
]

Device = Union[str, torch.device, None]


# ---------------------------------------------------------------------------------------------------------
# Running a detector over samples
# ---------------------------------------------------------------------------------------------------------
def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _image_tensor(sample: Sample) -> torch.Tensor:
    """A sample's image as float32 [C, H, W] in [0, 1] (no augmentation), as the evaluation transform gives."""
    img = torch.from_numpy(np.ascontiguousarray(sample.image))
    img = img[None] if img.ndim == 2 else img.permute(2, 0, 1)
    return img.to(torch.float32).div_(255.0)


def detect(model: nn.Module, samples: Sequence[Sample], *, device: Device = None,
           batch_size: int = 16) -> List[Dict[str, torch.Tensor]]:
    """Run a detector in eval mode over samples: one ``dict(boxes, labels, scores)`` per sample, on the CPU.

    Parameters
    ----------
    model : a torchvision-style detector (e.g. :func:`wsbus.models.build_detector`); its train/eval mode is
        restored afterwards.
    samples : the images (their boxes, if any, are not used).
    device : where to run; default the model's device. The model is moved there.
    batch_size : images per forward pass.

    Returns
    -------
    list of dict with ``boxes`` float [D, 4] (input pixel coordinates), ``labels`` int64 [D], ``scores`` [D].

    Notes
    -----
    Taught in ``book/07_self_training.md``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    samples = list(samples)
    for k, s in enumerate(samples):
        if not isinstance(s, Sample):
            raise TypeError(f"item {k}: expected a wsbus.data.Sample, got {type(s).__name__}")
    dev = torch.device(device) if device is not None else _model_device(model)
    model.to(dev)
    was_training = model.training
    model.eval()
    out: List[Dict[str, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for start in range(0, len(samples), batch_size):
                chunk = samples[start:start + batch_size]
                images = [_image_tensor(s).to(dev) for s in chunk]
                for s, det in zip(chunk, model(images)):
                    for key in ("boxes", "labels", "scores"):
                        if key not in det:
                            raise KeyError(f"sample {s.id!r}: the detector's output lacks {key!r} "
                                           f"(got {sorted(det)})")
                    out.append({k: det[k].detach().cpu() for k in ("boxes", "labels", "scores")})
    finally:
        model.train(was_training)
    return out


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
    Ties in score keep the detector's order (the first of equal scores wins). Taught in
    ``book/07_self_training.md``.
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

    Taught in ``book/07_self_training.md``.
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
        from .viz.detections import plot_precision_vs_rank
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
@dataclass
class SelfTrainingResult:
    """What :func:`self_train` produced: Table IV's columns plus everything behind them.

    Attributes
    ----------
    methods : :class:`wsbus.evaluate.MethodResult` per model: ``"initial"`` then ``"retrained_<q>%"``.
    pseudo : the pseudo-labels of the weak set (aligned with it).
    precision : :class:`PseudoBoxPrecision`, or ``None`` when the weak set has no hidden boxes.
    models : the trained models by method name.
    histories : the training :class:`wsbus.train.History` by method name (``"initial"`` is absent when an
        initial model was passed in).
    detections : test-set detections by method name.
    sets : ``(n_strong, n_weak)`` by method name.
    moved : ids of the weak images moved to the strong set, by retrained method name (most confident first).
    seconds : wall-clock seconds spent per method (training + evaluation) and on pseudo-labelling.

    Taught in ``book/07_self_training.md``.
    """

    methods: List[Any]
    pseudo: List[Optional[PseudoLabel]]
    precision: Optional[PseudoBoxPrecision]
    models: Dict[str, nn.Module] = field(default_factory=dict, repr=False)
    histories: Dict[str, Any] = field(default_factory=dict, repr=False)
    detections: Dict[str, List[Dict[str, torch.Tensor]]] = field(default_factory=dict, repr=False)
    sets: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    moved: Dict[str, List[str]] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)

    def table(self, fmt: str = "markdown") -> str:
        """The Table IV-shaped table (:func:`wsbus.evaluate.results_table` with ``kind="IV"``)."""
        from .evaluate import results_table
        return results_table(self.methods, kind="IV", fmt=fmt)

    def to_json(self, fractions: Optional[Sequence[float]] = None) -> Dict[str, Any]:
        """``{"methods": [...], "pseudo_box_precision": {...} | None}`` in ``results.json``'s format."""
        from .evaluate import to_json_methods
        qs = fractions if fractions is not None else [float(m.name.split("_")[1].rstrip("%")) / 100
                                                      for m in self.methods if m.name.startswith("retrained_")]
        prec = None
        if self.precision is not None:
            prec = self.precision.as_dict(qs)
            prec["moved"] = {name: {"n": len(ids), "precision": None if not ids else self.precision.of_ids(ids)}
                             for name, ids in self.moved.items()}
        return {"methods": to_json_methods(self.methods), "pseudo_box_precision": prec}


def _method_name(fraction: float) -> str:
    return f"retrained_{100 * float(fraction):g}%"


def _build(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``factory()`` with the global torch RNG seeded for it and restored afterwards (same init every call)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return factory()


def self_train(strong: Sequence[Sample], weak: Sequence[Sample], test: Sequence[Sample], *,
               model_factory: Callable[[], nn.Module], initial: Optional[nn.Module] = None,
               fractions: Sequence[float] = (0.5, 0.75), steps: int = 1000, retrain: str = "scratch",
               retrain_steps: Optional[int] = None, device: Device = None, batch_size: int = 16,
               score_thresh: float = 0.0, per_class: bool = False, seed: int = 3, init_seed: int = 0,
               trainer_kwargs: Optional[Mapping[str, Any]] = None, n_boot: int = 1000,
               progress: bool = True, on_step: Optional[Callable[[str, Any, Dict[str, Any]], None]] = None,
               ) -> SelfTrainingResult:
    """Self-training as in the paper's Table IV: joint model → pseudo-boxes → retrain for each fraction.

    Parameters
    ----------
    strong, weak, test : the training sets (weak samples may keep hidden boxes: they are then used to measure
        pseudo-box precision, never for training) and the test set (with boxes) for CorLoc.
    model_factory : builds a fresh detector, e.g. ``lambda: build_detector("tiny")``; called under a fixed torch
        seed (``init_seed``) so the initial and every retrained model start from the same weights.
    initial : an already trained joint model; when ``None`` one is trained with :class:`wsbus.train.Trainer`
        (``mode="joint"``) for ``steps`` steps.
    fractions : shares of the weak set moved to the strong set (paper: 0.5 and 0.75).
    steps : training steps of the initial model.
    retrain : ``"scratch"`` (the paper: a new model on the reconfigured sets, same initial weights) or
        ``"finetune"`` (continue from a copy of the initial model).
    retrain_steps : steps of each retraining (default ``steps``).
    device : ``"cpu"``, ``"cuda"``...; default: the initial model's device, else CPU.
    batch_size, score_thresh : for :func:`pseudo_label` and the test-set detections.
    per_class : move the top fraction of each image label separately (:func:`reconfigure`).
    seed : the Trainer's seed (data order, augmentation, sampling).
    trainer_kwargs : more :class:`wsbus.train.Trainer` arguments (``alpha``, ``lr``, ``n_strong``, ``n_weak``,
        ``stream``, ``transforms``...). With an empty reconfigured weak set the retraining runs in strong mode.
    n_boot : bootstrap resamples of the CorLoc CIs.
    progress : show the Trainer's progress bars.
    on_step : optional ``f(method_name, trainer, record)`` called after every training step (for an outer
        progress bar).

    Returns
    -------
    :class:`SelfTrainingResult`; ``result.table()`` is Table IV.

    Notes
    -----
    Taught in ``book/07_self_training.md``.
    """
    from .evaluate import MethodResult, corloc
    from .train import Trainer

    if retrain not in ("scratch", "finetune"):
        raise ValueError(f"retrain must be 'scratch' or 'finetune', got {retrain!r}")
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
    retrain_steps = steps if retrain_steps is None else int(retrain_steps)
    kwargs = dict(trainer_kwargs or {})
    for key in ("mode", "steps", "seed", "device", "callbacks"):
        if key in kwargs:
            raise ValueError(f"trainer_kwargs must not set {key!r}; self_train sets it")
    kwargs.setdefault("progress", progress)
    kwargs.setdefault("tensorboard", False)
    if device is None:
        device = _model_device(initial) if initial is not None else torch.device("cpu")
    device = torch.device(device)

    result = SelfTrainingResult(methods=[], pseudo=[], precision=None)

    def train(name: str, model: nn.Module, s: List[Sample], w: List[Sample], n_steps: int):
        mode = "joint" if w else "strong"
        kw = dict(kwargs)
        if mode == "strong":
            for key in ("alpha", "stream", "n_weak"):
                kw.pop(key, None)
        callbacks = [] if on_step is None else [lambda trainer, record: on_step(name, trainer, record)]
        trainer = Trainer(model, s, w if w else None, mode=mode, steps=n_steps, seed=seed, device=device,
                          callbacks=callbacks, **kw)
        result.histories[name] = trainer.fit()
        return trainer.model

    def evaluate(name: str, model: nn.Module, n_s: int, n_w: int, started: float) -> None:
        dets = detect(model, test, device=device, batch_size=batch_size)
        res = corloc(dets, test)
        result.methods.append(MethodResult.from_corloc(name, res, n_strong=n_s, n_weak=n_w, n_boot=n_boot,
                                                       seed=0, supervision="Weak & Semi"))
        result.detections[name] = dets
        result.models[name] = model
        result.sets[name] = (n_s, n_w)
        result.seconds[name] = time.perf_counter() - started

    t0 = time.perf_counter()
    if initial is None:
        initial = train("initial", _build(model_factory, init_seed), strong, weak, steps)
    initial.to(device)
    evaluate("initial", initial, len(strong), len(weak), t0)

    t0 = time.perf_counter()
    result.pseudo = pseudo_label(initial, weak, device=device, batch_size=batch_size, score_thresh=score_thresh)
    if all(s.boxes is not None for s in weak):
        result.precision = pseudo_box_precision(result.pseudo, weak)
    result.seconds["pseudo_label"] = time.perf_counter() - t0

    for q in fractions:
        t0 = time.perf_counter()
        name = _method_name(q)
        new_strong, new_weak = reconfigure(strong, weak, result.pseudo, q, per_class=per_class)
        result.moved[name] = [x.id for x in new_strong[len(strong):]]
        model = _build(model_factory, init_seed) if retrain == "scratch" else copy.deepcopy(initial)
        model = train(name, model, new_strong, new_weak, retrain_steps)
        evaluate(name, model, len(new_strong), len(new_weak), t0)
    return result


# ---------------------------------------------------------------------------------------------------------
# From a `wsbus train` checkpoint (the `wsbus self-train` command)
# ---------------------------------------------------------------------------------------------------------
def _alpha_from_description(description: Any) -> Union[str, float]:
    """The alpha spec of a checkpoint's trainer config (stored as a description) for the retraining."""
    if isinstance(description, (int, float)) and not isinstance(description, bool):
        return float(description)
    text = str(description or "")
    if text.startswith("Gradual("):
        return "gradual"  # the paper's staircase, rescaled to the retraining's length
    if text.startswith("Constant(value="):
        return float(text[len("Constant(value="):].rstrip(")"))
    raise ValueError(f"cannot recover the MIL weight alpha from the checkpoint's description {description!r}; "
                     f"pass alpha explicitly (--alpha)")


def self_train_from_checkpoint(checkpoint: Union[str, "os.PathLike[str]"], out_dir: Union[str, "os.PathLike[str]"],
                               *, data: Optional[str] = None, fractions: Sequence[float] = (0.5, 0.75),
                               steps: Optional[int] = None, retrain: str = "scratch",
                               alpha: Union[str, float, None] = None, device: Device = None,
                               seed: Optional[int] = None, batch_size: int = 16, score_thresh: float = 0.0,
                               n_boot: int = 1000, progress: bool = True) -> SelfTrainingResult:
    """Self-train from a checkpoint of ``wsbus train``: its model, data spec and split, written to ``out_dir``.

    The checkpoint's model is the initial model; its strong / weak / test images are those recorded in the
    checkpoint's split (``config["metadata"]["split_ids"]``), reloaded from ``data`` (default: the checkpoint's
    data spec). Each retraining uses the checkpoint's trainer settings (batch sizes, stream, lr, weight decay,
    optimizer, seed, alpha) unless overridden.

    Parameters
    ----------
    checkpoint : ``DIR/last.pt`` of a ``wsbus train`` run (best a joint one, as in the paper).
    out_dir : receives ``results.json`` (``{"methods": [...], "pseudo_box_precision": ...}``), ``table_iv.md``,
        ``pseudo_labels.json`` and ``precision_vs_rank.png`` (when the weak images have hidden boxes).
    data : a ``--data`` spec; default the checkpoint's.
    fractions, retrain, batch_size, score_thresh, n_boot, progress : see :func:`self_train`.
    steps : steps of each retraining; default the checkpoint's training length.
    alpha : MIL weight of the retrainings; default the checkpoint's (a gradual schedule is rescaled to ``steps``).
    device : default CUDA when available, else CPU.
    seed : Trainer seed; default the checkpoint's.

    Returns
    -------
    :class:`SelfTrainingResult`

    Raises
    ------
    wsbus.checkpoint.CheckpointError
        when the file is not a ``wsbus train`` checkpoint.
    ValueError
        when the checkpoint holds no split, or the data lack images of the split.

    Notes
    -----
    Taught in ``book/07_self_training.md``.
    """
    import json
    from pathlib import Path

    from .checkpoint import CheckpointError, load_checkpoint
    from .data.sources import load_source
    from .distributed import resolve_device
    from .evaluate import results_table
    from .models import build_detector

    ckpt = load_checkpoint(checkpoint, map_location="cpu", require=("model", "config"))
    config = ckpt["config"] or {}
    model_config = dict(config.get("model") or {})
    trainer_cfg = dict(config.get("trainer") or {})
    meta = dict(config.get("metadata") or {})
    if not model_config:
        raise CheckpointError(f"checkpoint {str(checkpoint)!r} has no model config; it was not written by "
                              f"`wsbus train`")
    split_ids = meta.get("split_ids") or {}
    if not all(k in split_ids for k in ("strong", "weak", "test")):
        raise ValueError(f"checkpoint {str(checkpoint)!r} records no strong/weak/test split (metadata "
                         f"'split_ids'); self-training needs to know which images were weak")
    spec = data or meta.get("data")
    if not spec:
        raise ValueError(f"checkpoint {str(checkpoint)!r} does not say which data it was trained on; pass data")
    samples = load_source(spec, size=int(meta.get("phantom_size", 128)), seed=0)
    by_id = {s.id: s for s in samples}
    sets = {}
    for role in ("strong", "weak", "test"):
        missing = [i for i in split_ids[role] if i not in by_id]
        if missing:
            raise ValueError(f"{len(missing)} {role} image(s) of checkpoint {str(checkpoint)!r} are not in {spec} "
                             f"(e.g. {missing[:3]}); is it the same data?")
        sets[role] = [by_id[i] for i in split_ids[role]]
    blind = [s.id for s in sets["test"] if not s.is_strong]
    if blind:
        raise ValueError(f"{len(blind)} test image(s) of {spec} have no boxes (e.g. {blind[:3]}); CorLoc needs boxes")

    model_config["pretrained"] = False  # the weights come from the checkpoint; nothing to download
    dev = resolve_device(device)
    initial = build_detector(**model_config)
    initial.load_state_dict(ckpt["model"])
    initial.to(dev)
    kwargs: Dict[str, Any] = {}
    for key in ("n_strong", "n_weak", "lr", "weight_decay", "optimizer", "stream"):
        if key in trainer_cfg and trainer_cfg[key] is not None:
            kwargs[key] = trainer_cfg[key]
    if alpha is not None:
        kwargs["alpha"] = alpha
    elif trainer_cfg.get("alpha") is not None:
        kwargs["alpha"] = _alpha_from_description(trainer_cfg["alpha"])
    n_steps = int(steps if steps is not None else trainer_cfg.get("steps") or ckpt.get("step") or 0)
    if n_steps < 1:
        raise ValueError(f"cannot tell how long to retrain from checkpoint {str(checkpoint)!r}; pass steps")
    result = self_train(sets["strong"], sets["weak"], sets["test"],
                        model_factory=lambda: build_detector(**model_config), initial=initial,
                        fractions=fractions, steps=n_steps, retrain=retrain, device=dev,
                        batch_size=batch_size, score_thresh=score_thresh,
                        seed=int(seed if seed is not None else trainer_cfg.get("seed", 3)), n_boot=n_boot,
                        trainer_kwargs=kwargs, progress=progress)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.to_json(fractions)
    summary.update({"checkpoint": str(checkpoint), "data": spec, "retrain": retrain, "steps": n_steps,
                    "initial_mode": trainer_cfg.get("mode")})
    pseudo = [None if p is None else {"id": p.id, "box": [float(v) for v in p.box], "label": p.label,
                                      "score": p.score} for p in result.pseudo]
    for name, obj in (("results.json", summary), ("pseudo_labels.json", {"weak": split_ids["weak"],
                                                                          "pseudo": pseudo})):
        tmp = out / f".{name}.tmp"
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, out / name)
    (out / "table_iv.md").write_text(results_table(result.methods, kind="IV"))
    if result.precision is not None and result.precision.n_labelled:
        result.precision.figure(fractions).savefig(out / "precision_vs_rank.png", dpi=110)
    for name, h in result.histories.items():
        h.to_csv(out / f"log_{name.replace('%', 'pct')}.csv")
    return result
