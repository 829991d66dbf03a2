"""The paper's self-training procedure (Shin et al., TMI 2019, Sec. IV-D, Table IV), offline.

From the joint model: pseudo-label every weak image (:func:`wsbus.self_training.pseudo_label`), move the most
confident fraction to the strong set with its pseudo-box (:func:`wsbus.self_training.reconfigure`), retrain; for each
fraction, and ``rounds`` > 1 times from each round's retrained model (1: the paper's).

**Retraining from scratch.** The paper "retrains" with the reconfigured sets; ``retrain="scratch"`` re-initialises the
network (with the same initial weights as the first model) and trains it for the same number of steps, so that
"after" differs from "before" only by the training sets. ``retrain="finetune"`` continues from the model that made
the pseudo-labels instead (cheaper; it keeps that model's mistakes as a starting point).
"""
from __future__ import annotations

import copy
import time
from typing import Callable, List

from torch import nn

from ..data.formats import Sample
from .loop import SelfTrainingLoop, retrained_name
from .pseudo_labels import reconfigure

__all__ = ["RETRAIN", "run_paper"]

#: How the paper's procedure retrains: a fresh model with the initial weights, or a copy of the labelling model.
RETRAIN = ("scratch", "finetune")


def run_paper(loop: SelfTrainingLoop, initial: nn.Module, strong: List[Sample], weak: List[Sample],
              fractions: List[float], steps: int, retrain: str, rounds: int, per_class: bool, score_thresh: float,
              fresh: Callable[[], nn.Module]) -> None:
    """The paper's procedure for each fraction (and each round): rank, move the top fraction, retrain.

    ``loop.result`` gets one method per fraction and round (:func:`wsbus.self_training.loop.retrained_name`), the ids
    each one moved, and the pseudo-labels, precision and top-class accuracy of the initial model on the weak set
    (from which the first moves were made). ``fresh()`` builds a model with the initial weights (``retrain=
    "scratch"``); ``retrain="finetune"`` starts each retraining from a copy of the model that labelled.
    """
    if retrain not in RETRAIN:
        raise ValueError(f"retrain must be 'scratch' or 'finetune', got {retrain!r}")
    result = loop.result
    loop.label_weak(initial, weak, score_thresh)
    first_pseudo, first_precision = result.pseudo, result.precision
    for q in fractions:
        labeller = initial
        pseudo = first_pseudo
        for r in range(1, rounds + 1):
            t0 = time.perf_counter()
            name = retrained_name(q, r)
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
