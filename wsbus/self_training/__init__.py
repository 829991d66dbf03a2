"""Self-training: pseudo-boxes for weakly labelled images, reconfigured training sets, retraining (Table IV).

Taught in ``book/07_self_training.md``.

Shin et al. (TMI 2019, Sec. IV-D, Table IV) grow the strongly supervised set without annotating anything:

1. train a joint model on few strong (boxed) and many weak (image-label) images;
2. run it on every weak image; the *pseudo ground truth* of an image is its most confident detection whose class
   equals the image label (:func:`pseudo_label`; no such detection: the image stays weak);
3. rank the weak images by that confidence and move the top fraction ``q`` (paper: 50 %, 75 %) to the strong set
   with their pseudo-boxes, the rest stay weak (:func:`reconfigure`);
4. retrain on the reconfigured sets and compare CorLoc before and after (:func:`self_train`).

Ours, beside the paper's procedure: online self-training with a mean teacher (:class:`MeanTeacherSettings`).

How good the pseudo-boxes are is measured against the weak images' hidden ground truth when the data has it
(:func:`pseudo_box_precision`: IoU > 0.5 with a ground-truth box of the same class), overall and as a function
of the rank, which is what decides how large ``q`` may be.

**Retraining from scratch.** :func:`self_train` re-initialises the network for each retraining (same initial
weights as the first model, same number of steps) unless ``retrain="finetune"`` (:mod:`.paper` says why).

The package has one module per job: :mod:`.pseudo_labels` (the pseudo-labels, the reconfigured sets, their
precision), :mod:`.paper` (the paper's offline procedure), :mod:`.mean_teacher` (the online one, ours), :mod:`.loop`
(the result and the train/evaluate/label loop both share); :func:`self_train` here chooses between the two.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..data.formats import Sample
from ..distributed import model_device
from ..seeding import seeded
from .loop import SelfTrainingLoop, SelfTrainingResult
from .mean_teacher import MeanTeacherSettings, run_mean_teacher
from .paper import RETRAIN, run_paper
from .pseudo_labels import (Device, PseudoBoxPrecision, PseudoLabel, n_moved, pseudo_box_precision, pseudo_label,
                            reconfigure, top_class_accuracy)

__all__ = ["PseudoLabel", "PseudoBoxPrecision", "SelfTrainingResult", "MeanTeacherSettings", "PROCEDURES",
           "pseudo_label", "reconfigure", "n_moved", "pseudo_box_precision", "top_class_accuracy", "self_train"]

#: The self-training procedures: the paper's offline one and the online mean teacher (ours).
PROCEDURES = ("paper", "mean_teacher")


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
    if retrain not in RETRAIN:
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
    loop = SelfTrainingLoop(test, result, device, seed, kwargs, on_step, out_dir, batch_size, n_boot)

    t0 = time.perf_counter()
    if initial is None:
        with seeded(init_seed):
            model = model_factory()
        initial = loop.train("initial", model, strong, weak, steps)
    initial.to(device)
    loop.evaluate("initial", initial, len(strong), len(weak), t0)
    retrain_steps = steps if retrain_steps is None else int(retrain_steps)
    if procedure == "mean_teacher":
        run_mean_teacher(loop, initial, strong, weak, retrain_steps, mean_teacher or MeanTeacherSettings(),
                         score_thresh)
    else:
        run_paper(loop, initial, strong, weak, fractions, retrain_steps, retrain, int(rounds), per_class, score_thresh,
                  lambda: _fresh(model_factory, init_seed))
    return result


def _fresh(model_factory: Callable[[], nn.Module], init_seed: int) -> nn.Module:
    with seeded(init_seed):
        return model_factory()
