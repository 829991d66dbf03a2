"""The one training path: :func:`train_method` trains a method of the protocol from a recipe.

``wsbus experiment``, ``wsbus train``, ``wsbus demo`` and ``wsbus ablate`` all train through this function, so the
same data, split, recipe and seed give the same weights, bit for bit on CPU, whichever command trains them.

=======================  ======================================================================================
``strong_full``          every training image with its box (the fully supervised upper reference)
``strong_few``           only the few boxed images
``weak_only``            every training image with only its image label (MIL alone)
``joint``                the few boxed images + the rest with image labels, trained as the recipe says (with the
                         REAL recipe: ours, a warm start from ``strong_few`` and a frozen MoI teacher; with
                         PHANTOM and PAPER: the paper's algorithm)
``joint_paper``          the paper's joint training exactly (its MoI map chosen by the head being trained, gradual
                         alpha over the run, 1 strong + 2 weak images per step, Adam at a constant 5e-4, from the
                         shared initial weights), with as many steps as ``joint`` (its warm-up included)
``joint_self_training``  ``joint`` -> pseudo-boxes on the weak images -> retrained (Table IV; not trained here:
                         :meth:`wsbus.experiments.Experiment.self_training`)
=======================  ======================================================================================
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..checkpoint import CheckpointError, load_checkpoint
from ..engine import History, Trainer
from ..models import build_detector
from ..pretrain import init_backbone, pretrain_backbone
from ..seeding import seeded
from ..teachers import MoITeacher
from .data import ExperimentData, experiment_seeds
from .recipe import Recipe

__all__ = ["METHODS", "CROSS_SITE_METHODS", "TRAINED_METHODS", "WEAKLY_SUPERVISED", "TrainedMethod", "method_sets", "build_method_model",
           "method_trainer", "train_method", "warm_start_of", "mil_warning", "load_initial_weights", "method_names",
           "initial_weights", "pretrained_backbone"]

#: The methods of an experiment, in table order.
METHODS = ("strong_full", "strong_few", "weak_only", "joint", "joint_paper", "joint_self_training")
#: The methods of a cross-site experiment (:func:`wsbus.experiments.prepare_cross_site`), in table order:
#: ``source_only`` (the source's boxes), ``joint`` and ``joint_self_training`` (+ the target's image labels), and
#: the target references ``target_few`` (a few target boxes) and ``target_full`` (every target training box).
CROSS_SITE_METHODS = ("source_only", "joint", "joint_self_training", "target_few", "target_full")
#: The methods :func:`train_method` trains (self-training starts from a trained ``joint``).
TRAINED_METHODS = METHODS[:-1] + ("source_only", "target_few", "target_full")
#: Methods whose training uses the MIL loss of weak images.
WEAKLY_SUPERVISED = ("weak_only", "joint", "joint_paper", "joint_self_training")
Device = Union[str, torch.device, None]
PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class TrainedMethod:
    """What :func:`train_method` returns: the trained ``model``, its ``history``, the ``trainer`` (for its
    checkpoint path and :meth:`~wsbus.engine.Trainer.mil_summary`), the ``recipe`` as the method read it
    (:meth:`Recipe.for_method`) and ``mil`` (the MIL summary: how many weak images the MIL loss reached)."""

    method: str
    model: torch.nn.Module
    history: History
    trainer: Trainer
    recipe: Recipe
    mil: Dict[str, Any]


def method_sets(method: str, data: ExperimentData) -> Tuple[Optional[list], Optional[list], str]:
    """``(strong, weak, mode)`` of a trained method on a split (or a cross-site experiment's data)."""
    if data.design == "cross_site":
        if method == "target_full" and any(not s.is_strong for s in data.weak):
            raise ValueError(f"target_full trains on the target's boxes, but {data.target!r} has images without boxes")
        if method == "target_few" and not data.target_strong:
            raise ValueError("target_few needs boxed target images (n_target_strong > 0)")
        sets = {"source_only": (data.strong, None, "strong"), "joint": (data.strong, data.weak, "joint"),
                "target_few": (data.target_strong, None, "strong"), "target_full": (data.weak, None, "strong")}
    else:
        sets = {"strong_full": (data.strong + data.weak, None, "strong"), "strong_few": (data.strong, None, "strong"),
                "weak_only": (None, data.strong + data.weak, "weak"), "joint": (data.strong, data.weak, "joint"),
                "joint_paper": (data.strong, data.weak, "joint")}
    if method not in sets:
        raise ValueError(f"unknown trained method {method!r} for a {data.design} experiment; choose one of "
                         f"{list(sets)}")
    return sets[method]


def warm_start_of(method: str, recipe: Recipe, design: str = "split") -> Optional[str]:
    """The method whose final weights ``method`` starts from: for a warm-started ``joint``, ``"strong_few"`` (or
    ``"source_only"`` in a cross-site experiment)."""
    if method == "joint" and recipe.for_method("joint").joint_warm_start:
        return "source_only" if design == "cross_site" else "strong_few"
    return None


def build_method_model(method: str, data: ExperimentData, recipe: Recipe, seed: int,
                       backbone: Optional[PathLike] = None, **overrides: Any) -> torch.nn.Module:
    """The detector of ``method``, initialised from the split's shared initial weights (every method of a seed
    starts from the same weights; only options that do not change the parameters differ between methods), with
    the label-free pretrained ``backbone`` (a :func:`wsbus.pretrain.pretrain_backbone` file) when given."""
    init_seed, _ = experiment_seeds(seed)
    recipe = recipe.resolve(data.strong, data.weak)
    options = recipe.for_method(method).detector_options(data.strong + data.weak, **overrides)
    with seeded(init_seed):
        model = build_detector(**options)
    if backbone is not None:
        init_backbone(model, backbone)
    return model


def pretrained_backbone(data: ExperimentData, recipe: Recipe, seed: int, out: PathLike, *,
                        device: Device = None, progress: bool = False) -> Optional[Path]:
    """The recipe's label-free pretraining (``recipe.pretrain``) on the split's training images (boxed and weak;
    never validation or test), written to (or, when already there, read back from) ``out``; None when the recipe
    has none."""
    recipe = recipe.resolve(data.strong, data.weak)
    if not recipe.pretrain:
        return None
    init_seed, _ = experiment_seeds(seed)
    settings = {"size": recipe.size, "max_size": recipe.max_size if recipe.max_size is not None else recipe.size,
                "backbone": recipe.backbone, "seed": init_seed, **dict(recipe.pretrain)}
    return Path(pretrain_backbone(data.strong + data.weak, out, device=device, progress=progress, **settings).path)


def method_trainer(method: str, data: ExperimentData, recipe: Recipe, model: torch.nn.Module, *, seed: int,
                   device: Device = None, out_dir: Optional[PathLike] = None,
                   warm_start: Optional[Mapping[str, torch.Tensor]] = None, steps: Optional[int] = None,
                   hooks: Sequence[Any] = (), started: bool = False, **trainer_options: Any) -> Trainer:
    """The :class:`~wsbus.engine.Trainer` of ``method`` on ``model``: its sets and mode (:func:`method_sets`), the
    recipe's steps, batch sizes, optimiser and alpha, a warm start (``warm_start``: the weights of
    :func:`warm_start_of`, required when the recipe asks for one, unless ``started``: the model already holds the
    weights chosen to start from) and the recipe's MoI teacher for ``joint``.
    ``trainer_options`` (checkpointing, logging, AMP, workers...) go to the Trainer unchanged."""
    recipe = recipe.resolve(data.strong, data.weak)
    r = recipe.for_method(method)
    strong, weak, mode = method_sets(method, data)
    steps = int(steps if steps is not None else r.steps_of(method))
    kw: Dict[str, Any] = dict(r.trainer_options())
    hooks = list(hooks)
    if mode == "joint":
        kw.update(alpha=r.alpha_schedule(steps), mixing=r.mixing, **dict(r.joint_trainer))
        if r.moi_teacher:
            hooks.append(MoITeacher(**dict(r.moi_teacher)))
    needed = warm_start_of(method, recipe, data.design)
    if needed and warm_start is None and not started:
        raise ValueError(f"{method} starts from the trained {needed} model (the recipe's joint_warm_start); pass its "
                         f"weights as warm_start")
    if warm_start is not None:
        model.load_state_dict(warm_start)  # before the Trainer: a teacher copies the model when attached
    _, train_seed = experiment_seeds(seed)
    kw.update(trainer_options)
    return Trainer(model, strong, weak, mode=mode, steps=steps, seed=train_seed, device=device, out_dir=out_dir,
                   hooks=hooks, **kw)


def train_method(method: str, data: ExperimentData, recipe: Recipe, out_dir: Optional[PathLike], *, seed: int,
                 device: Device = None, warm_start: Optional[Mapping[str, torch.Tensor]] = None,
                 init: Union[Mapping[str, torch.Tensor], PathLike, None] = None, steps: Optional[int] = None,
                 resume: bool = True, before_fit: Optional[Callable[[Trainer], None]] = None,
                 model_overrides: Optional[Mapping[str, Any]] = None, backbone: Optional[PathLike] = None,
                 **trainer_options: Any) -> TrainedMethod:
    """Train ``method`` (:data:`TRAINED_METHODS`) on a split as the recipe says; the one training path.

    Parameters
    ----------
    data : the split (:func:`wsbus.experiments.prepare_data`). recipe : the settings. seed : the experiment seed
        (initial weights and data order, :func:`wsbus.experiments.experiment_seeds`).
    out_dir : checkpoints, ``log.csv`` and ``train.log`` (None: in memory).
    warm_start : the final weights of :func:`warm_start_of` (needed for a warm-started ``joint``).
    init : weights to start from instead of the shared initial weights and any warm start (``wsbus train --init``):
        a state dict, or a file (:func:`initial_weights`); a dict holding only ``backbone.*`` keys initialises the
        backbone alone (label-free pretraining).
    steps : train this many steps instead of the recipe's.
    resume : continue from ``out_dir/last.pt`` when it exists (refused, changing no file, when it belongs to
        another run); nothing to resume without ``out_dir``.
    before_fit : called with the Trainer after any resume check and before training (``wsbus train`` writes its
        ``config.json`` there, so a refused resume leaves every file as it was).
    model_overrides : detector options that do not change the parameters (e.g. ``pretrained``).
    backbone : a label-free pretrained backbone (:func:`pretrained_backbone`), part of the shared initial weights.
    trainer_options : more :class:`~wsbus.engine.Trainer` arguments (``checkpoint_every``, ``progress``,
        ``tensorboard``, ``callbacks``, ``amp``, ``num_workers``, ``metadata``...).

    Returns
    -------
    TrainedMethod. A joint or weak-only run whose MIL loss reached no weak image is reported by
    :func:`mil_warning`, never hidden.

    Taught in ``book/09_real_data.md``.
    """
    recipe = recipe.resolve(data.strong, data.weak)
    model = build_method_model(method, data, recipe, seed, backbone=backbone, **dict(model_overrides or {}))
    if init is not None:
        source = "the initial weights"
        if not isinstance(init, Mapping):
            source, init = f"--init {str(init)!r}", initial_weights(init)
        load_initial_weights(model, init, source)
    trainer = method_trainer(method, data, recipe, model, seed=seed, device=device, out_dir=out_dir,
                             warm_start=warm_start if init is None else None, steps=steps, started=init is not None,
                             **trainer_options)
    if resume and out_dir is not None:
        trainer.resume()
    if before_fit is not None:
        before_fit(trainer)
    history = trainer.fit()
    return TrainedMethod(method, trainer.model, history, trainer, recipe.for_method(method), trainer.mil_summary())


def initial_weights(path: PathLike) -> Dict[str, torch.Tensor]:
    """The weights in ``path`` to start a run from: a wsbus training checkpoint's detector (``model``), or a label-free
    pretrained backbone (``backbone``, from ``wsbus pretrain``; returned with ``backbone.`` keys, so only the
    backbone is initialised)."""
    state = load_checkpoint(path, map_location="cpu")
    if isinstance(state.get("model"), Mapping):
        return dict(state["model"])
    if isinstance(state.get("backbone"), Mapping):
        return {f"backbone.{k}": v for k, v in state["backbone"].items()}
    raise CheckpointError(f"{str(path)!r} holds neither a detector ('model') nor a pretrained backbone ('backbone'); "
                          f"pass a `wsbus train` checkpoint or a `wsbus pretrain` file")


def load_initial_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor],
                         source: str = "the initial weights") -> None:
    """Load ``weights`` into ``model``: a whole detector's state dict, or only its ``backbone.*`` entries; a
    mismatch is a ``ValueError`` naming ``source`` and the first differing entries."""
    own = model.state_dict()
    keys = list(weights)
    if keys and all(k.startswith("backbone.") for k in keys):
        own_backbone = [k for k in own if k.startswith("backbone.")]
        missing = [k for k in own_backbone if k not in weights]
        extra = [k for k in keys if k not in own]
        if missing or extra:
            raise ValueError(f"{source}: a backbone that does not fit this detector's {model.config.get('backbone')!r} "
                             f"backbone (missing {missing[:2]}, unexpected {extra[:2]})")
        weights = {**own, **weights}
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    if missing or extra or shapes:
        raise ValueError(f"{source} do not fit this detector ({model.config.get('backbone')!r} backbone): "
                         + "; ".join(part for part in (f"missing {missing[:2]}" if missing else "",
                                                       f"unexpected {extra[:2]}" if extra else "",
                                                       f"other shapes for {shapes[:2]}" if shapes else "") if part))
    model.load_state_dict(weights)


def mil_warning(method: str, mil: Mapping[str, Any]) -> Optional[str]:
    """A warning when a weakly supervised method's MIL loss reached no weak image (then it was strong-only (or
    nothing) training in effect), else None."""
    if method in WEAKLY_SUPERVISED and mil.get("weak_images", 0) > 0 and mil.get("reached", 0) == 0:
        return (f"{method}: the MIL loss reached none of the {mil['weak_images']} weak images (a teacher's confidence "
                f"gate passed none, or alpha was 0): this run was not {method} training in effect")
    return None


def method_names(methods: Sequence[str], design: str = "split") -> List[str]:
    """``methods`` in the table order of the design (``"split"``: :data:`METHODS`, ``"cross_site"``:
    :data:`CROSS_SITE_METHODS`); raises ``ValueError`` on unknown names."""
    known = CROSS_SITE_METHODS if design == "cross_site" else METHODS
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown} for a {design} experiment; choose from {list(known)}")
    return [m for m in known if m in methods]
