"""What both self-training procedures share: the result they fill (:class:`SelfTrainingResult`, Table IV and
``results.json``'s self-training part) and the loop that trains a model on given sets, evaluates it on the test set
and pseudo-labels the weak set (:class:`SelfTrainingLoop`)."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..data.formats import Sample
from ..engine import Trainer
from ..evaluate import MethodResult, corloc, results_table, to_json_methods
from ..inference import detect
from .pseudo_labels import PseudoBoxPrecision, PseudoLabel, best_of_class, pseudo_box_precision, top_class_accuracy

__all__ = ["SelfTrainingResult", "SelfTrainingLoop", "retrained_name", "STRONG_MODE_IGNORED"]

#: The Trainer settings a retraining in strong mode (an empty reconfigured weak set) drops: they concern the weak
#: stream or the mixing of the two (``n_weak`` is ``batch_weak``'s name before wsbus 0.2).
STRONG_MODE_IGNORED = ("alpha", "mixing", "batch_weak", "n_weak")


@dataclass
class SelfTrainingResult:
    """What :func:`wsbus.self_training.self_train` produced: Table IV's columns plus everything behind them.

    Attributes
    ----------
    methods : :class:`wsbus.evaluate.MethodResult` per model: ``"initial"``, then ``"retrained_<q>%"`` (the paper's
        procedure; ``..._round<r>`` for later rounds) or ``"mean_teacher"``.
    pseudo : the pseudo-labels of the weak set (aligned with it) by the model the result ends with (the paper's:
        by the initial model, from which the first moves were made).
    precision : :class:`~wsbus.self_training.PseudoBoxPrecision` of ``pseudo``, or ``None`` when the weak set has no
        hidden boxes.
    class_accuracy : :func:`~wsbus.self_training.top_class_accuracy` of that model on the weak set.
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


def retrained_name(fraction: float, round_: int = 1) -> str:
    """The method name of a retraining by the paper's procedure: ``"retrained_50%"``, ``"retrained_50%_round2"``."""
    return f"retrained_{100 * float(fraction):g}%" + (f"_round{round_}" if round_ > 1 else "")


class SelfTrainingLoop:
    """The pieces both procedures share: train a model on given sets, evaluate it on the test set, pseudo-label the
    weak set; everything goes into ``result`` (a :class:`SelfTrainingResult`).

    Parameters
    ----------
    test : the test samples (with boxes) for CorLoc.
    result : the :class:`SelfTrainingResult` to fill.
    device : where models train and run.
    seed : the Trainer's seed.
    kwargs : more :class:`wsbus.engine.Trainer` settings (``checkpoint_every`` defaults to a tenth of the steps);
        in strong mode (no weak images) :data:`STRONG_MODE_IGNORED` are left out.
    on_step : optional ``f(method_name, trainer, record)`` after every training step.
    out_dir : when given, each method trains with checkpoints in ``out_dir/<method name>`` (``%`` as ``pct``) and
        resumes from them.
    batch_size, n_boot : detection batch size; bootstrap resamples of the CorLoc CIs.
    """

    def __init__(self, test: Sequence[Sample], result: SelfTrainingResult, device: torch.device, seed: int,
                 kwargs: Dict[str, Any], on_step: Optional[Callable[[str, Any, Dict[str, Any]], None]],
                 out_dir: Union[str, "os.PathLike[str]", None], batch_size: int, n_boot: int) -> None:
        self.test, self.result, self.device, self.seed = list(test), result, device, seed
        self.kwargs, self.on_step, self.out_dir = kwargs, on_step, out_dir
        self.batch_size, self.n_boot = batch_size, n_boot

    def train(self, name: str, model: nn.Module, s: List[Sample], w: List[Sample], n_steps: int,
              hooks: Sequence[Any] = ()) -> nn.Module:
        """Train ``model`` on strong ``s`` and weak ``w`` for ``n_steps`` (joint mode; strong mode when ``w`` is
        empty), record the history under ``name`` and return the trained model."""
        mode = "joint" if w else "strong"
        kw = dict(self.kwargs)
        if mode == "strong":
            for key in STRONG_MODE_IGNORED:
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
        """CorLoc (with its CI) of ``model`` on the test set as method ``name`` trained on ``n_s`` strong and ``n_w``
        weak images; ``started``: the ``time.perf_counter()`` at which the method began."""
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
        r.pseudo = [best_of_class(s, d, float(score_thresh)) for s, d in zip(weak, dets)]
        r.precision = pseudo_box_precision(r.pseudo, weak) if all(s.boxes is not None for s in weak) else None
        r.class_accuracy = top_class_accuracy(dets, weak)
        r.seconds["pseudo_label"] = r.seconds.get("pseudo_label", 0.0) + time.perf_counter() - t0
