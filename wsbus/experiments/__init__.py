"""Experiments: the recipe, the Table V + IV runner, the demo and the Table II ablation.

- :class:`Recipe` and its presets (:data:`PHANTOM`, :data:`REAL`, ...): how an experiment trains and measures;
- :func:`prepare_data`: one patient-level split of a data source;
- :func:`run_experiment` (``wsbus experiment``), :func:`run_demo` (``wsbus demo``), :func:`run_ablation`
  (``wsbus ablate``), :func:`self_train_from_checkpoint` (``wsbus self-train``).

Taught in ``book/09_real_data.md``.
"""
from .ablation import TABLE_II_VARIANTS, AblationResult, AblationVariant, run_ablation, run_ablations, \
    summarize_ablations
from .checkpoints import checkpoint_split, self_train_from_checkpoint
from .data import ExperimentData, experiment_seeds, prepare_data
from .demo import run_demo
from .recipe import PAPER, PHANTOM, PHANTOM_QUICK, REAL, REAL_QUICK, RECIPES, Recipe, mil_class_weights, recipe_for
from .runner import (METHODS, SUPERVISION, Experiment, check_finding, run_experiment, run_experiments,
                     summarize_experiments)

__all__ = ["Recipe", "PHANTOM", "PHANTOM_QUICK", "REAL", "REAL_QUICK", "PAPER", "RECIPES", "recipe_for",
           "mil_class_weights", "ExperimentData", "prepare_data", "experiment_seeds", "Experiment", "METHODS",
           "SUPERVISION", "check_finding", "run_experiment", "run_experiments", "summarize_experiments", "run_demo",
           "AblationVariant", "AblationResult", "TABLE_II_VARIANTS", "run_ablation", "run_ablations",
           "summarize_ablations", "checkpoint_split", "self_train_from_checkpoint"]
