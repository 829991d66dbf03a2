"""``wsbus train``: one method of the protocol trained into a folder, through the one training path.

:func:`train_run` splits the data as ``wsbus experiment`` does (:func:`wsbus.experiments.prepare_data`), trains the
method's warm start first when the recipe asks for one (``DIR/warm_start/``), then the method itself
(:func:`wsbus.experiments.train_method`), so that the same data, recipe and seed give the same weights as the
experiment's run of that method. The folder is protected: a finished or unfinished run in it is continued only with
``resume=True`` and replaced only with ``overwrite=True``; a resume that does not match the run in the folder is
refused before any file changes.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch

from ..checkpoint import CheckpointError, atomic_write_json, load_checkpoint
from ..distributed import cleanup_distributed, init_distributed
from ..provenance import provenance
from .data import ExperimentData, prepare_data, samples_description
from ..pretrain import BACKBONE_FILE_KIND
from .methods import TRAINED_METHODS, initial_weights, mil_warning, pretrained_backbone, train_method, warm_start_of
from .recipe import Recipe

__all__ = ["TRAIN_MODES", "TrainReport", "train_run", "method_of_mode"]

#: ``wsbus train --mode`` values: the contract's three modes and every trained method's name.
TRAIN_MODES = {"strong": "strong_few", "weak": "weak_only", "joint": "joint",
               **{m: m for m in TRAINED_METHODS}}
#: The files ``wsbus train`` writes into its folder (``overwrite`` removes these and nothing else).
RUN_FILES = ("last.pt", "log.csv", "train.log", "config.json", "split.json")
RUN_GLOBS = ("step_*.pt", ".last.pt.*.tmp", ".step_*.pt.*.tmp")
RUN_DIRS = ("tb", "warm_start")

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class TrainReport:
    """What :func:`train_run` did: the ``method`` trained, the ``step`` reached of ``steps``, the ``checkpoint``,
    the device and world size, the last loss, the MIL summary (``mil``; see
    :meth:`wsbus.engine.Trainer.mil_summary`) and ``warning`` (:func:`wsbus.experiments.mil_warning`: a weakly
    supervised run whose MIL loss reached no weak image), and the split's counts."""

    method: str
    mode: str
    step: int
    steps: int
    checkpoint: Path
    device: str
    world_size: int
    last_loss: Optional[float]
    mil: Dict[str, Any]
    warning: Optional[str]
    counts: Dict[str, Any]


def method_of_mode(mode: str) -> str:
    """The method a ``--mode`` trains (:data:`TRAIN_MODES`)."""
    if mode not in TRAIN_MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {sorted(TRAIN_MODES)}")
    return TRAIN_MODES[mode]


def is_pretrained_backbone(path: PathLike) -> bool:
    """True when ``path`` is a ``wsbus pretrain`` file (a label-free pretrained backbone)."""
    return load_checkpoint(path, map_location="cpu", require=()).get("kind") == BACKBONE_FILE_KIND


def _guard_folder(out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} is a file, not a folder")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"--out {str(out)!r}: {str(parent)!r} is a file, not a folder")
    last = out / "last.pt"
    if not last.is_file() or resume:
        return
    if overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for pattern in RUN_GLOBS:
            for p in out.glob(pattern):
                p.unlink()
        for name in RUN_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
        return
    try:
        step = load_checkpoint(last, map_location="cpu").get("step", "?")
    except CheckpointError:
        step = "?"
    raise ValueError(f"{str(out)!r} already holds a run (last.pt at step {step}); pass --resume to continue it or "
                     f"--overwrite to replace it")


def _check_split(out: Path, data: ExperimentData, resume: bool) -> Dict[str, List[str]]:
    ids = {role: [s.id for s in getattr(data, role)] for role in ("strong", "weak", "val", "test")}
    split_file = out / "split.json"
    if resume and split_file.is_file():
        import json

        saved = json.loads(split_file.read_text())
        for role in ("strong", "weak", "test"):
            if saved.get(role) != ids[role]:
                raise ValueError(f"--resume: the {role} images differ from {split_file} (the data, the recipe's split "
                                 f"or the seed changed since the run started)")
    return ids


def train_run(data: str, mode: str, out_dir: PathLike, *, recipe: Recipe, seed: int = 0,
              device: Union[str, torch.device, None] = None, resume: bool = False, overwrite: bool = False,
              init: Optional[PathLike] = None, steps: Optional[int] = None, pretrained: bool = False,
              argv: Optional[List[str]] = None, **trainer_options: Any) -> TrainReport:
    """Train one method of the protocol into ``out_dir`` (``wsbus train``).

    Parameters
    ----------
    data : a ``--data`` spec. mode : a :data:`TRAIN_MODES` key (``strong`` = ``strong_few``, ``weak`` =
        ``weak_only``, ``joint``, or a method name). recipe : the settings (split, model, training).
    seed : the experiment seed: split, initial weights and data order (as ``wsbus experiment --seed``).
    resume : continue the run in ``out_dir`` (refused, changing no file, when it belongs to another run).
    overwrite : replace a run already in ``out_dir`` (its files only). Without either, a folder holding a run is
        refused.
    init : start from this checkpoint's weights (or a pretrained backbone) instead of the shared initial weights
        and any warm start.
    steps : train this many steps (default: the recipe's for the method).
    pretrained : ImageNet backbone weights (downloads them).
    argv : the command line, recorded in ``config.json``.
    trainer_options : more :class:`wsbus.engine.Trainer` settings (``lr``, ``optimizer``, ``amp``,
        ``checkpoint_every``, ``progress``, ``tensorboard``, ``num_workers``, ...).

    Returns
    -------
    TrainReport

    Taught in ``book/09_real_data.md``.
    """
    method = method_of_mode(mode)
    out = Path(out_dir)
    info, device = init_distributed(device)
    try:
        if info.is_main:
            _guard_folder(out, resume, overwrite)
        split = prepare_data(data, recipe, seed)
        ids = _check_split(out, split, resume)
        backbone = None
        if init is not None and is_pretrained_backbone(init):
            # a `wsbus pretrain` file is part of the initial weights: the warm start (if any) trains from it too
            backbone, init = Path(init), None
        elif init is not None:
            initial_weights(init)  # an unreadable file is refused before any training
        elif split.recipe.pretrain:
            backbone = pretrained_backbone(split, recipe, seed, out / "pretrain" / "backbone.pt", device=device,
                                           progress=trainer_options.get("progress", True))
        metadata = {"data": data, "seed": int(seed), "method": method, "phantom_size": recipe.size,
                    "samples": samples_description(data, recipe, seed), "split_ids": ids,
                    "init": None if init is None else str(init), "argv": list(argv if argv is not None else sys.argv)}
        warm = None
        needed = warm_start_of(method, recipe)
        if needed and init is None and resume and (out / "last.pt").is_file():
            # The run continues from its own checkpoint, which holds its weights: no warm start is needed (and none
            # is trained or touched before the resume check).
            warm = load_checkpoint(out / "last.pt", map_location="cpu")["model"]
        elif needed and init is None:
            warm_run = train_method(needed, split, recipe, out / "warm_start", seed=seed, device=device,
                                    backbone=backbone,
                                    model_overrides={"pretrained": pretrained}, metadata={**metadata, "method": needed},
                                    **trainer_options)
            warm = warm_run.model.state_dict()

        def write_config(trainer) -> None:
            if info.is_main:
                atomic_write_json({"data": data, "seed": int(seed), **ids}, out / "split.json")
                atomic_write_json({"command": "train", "mode": mode, "method": method, "data": data, "seed": int(seed),
                                   "recipe": split.recipe.for_method(method).as_dict(), "split": split.counts(),
                                   "model": trainer.model_config, "trainer": trainer.settings(),
                                   "init": metadata["init"], "warm_start": needed if warm is not None else None,
                                   "argv": metadata["argv"], "provenance": provenance(trainer.device)},
                                  out / "config.json")

        run = train_method(method, split, recipe, out, seed=seed, device=device, warm_start=warm, init=init,
                           backbone=backbone,
                           steps=steps, resume=resume, before_fit=write_config,
                           model_overrides={"pretrained": pretrained}, metadata=metadata, **trainer_options)
        history = run.history
        return TrainReport(method=method, mode=mode, step=run.trainer.step, steps=run.trainer.max_step,
                           checkpoint=out / "last.pt", device=str(run.trainer.device),
                           world_size=info.world_size, last_loss=float(history[-1]["loss"]) if len(history) else None,
                           mil=run.mil, warning=mil_warning(method, run.mil), counts=split.counts())
    finally:
        cleanup_distributed()
