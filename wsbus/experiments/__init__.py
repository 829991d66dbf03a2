"""Experiments: the recipe, the Table V + IV runner, the demo and the Table II ablation.

- :class:`Recipe` and its presets (:data:`PHANTOM`, :data:`REAL`, ...): how an experiment trains and measures;
- :func:`prepare_data`: one patient-level split of a data source;
- :func:`train_method`: the one training path every command trains through;
- :func:`run_experiment` (``wsbus experiment``), :func:`run_demo` (``wsbus demo``), :func:`run_ablation`
  (``wsbus ablate``), :func:`self_train_from_checkpoint` (``wsbus self-train``).

Taught in ``book/09_real_data.md``.
"""
from .ablation import TABLE_II_VARIANTS, AblationResult, AblationVariant, run_ablation, run_ablations, \
    summarize_ablations
from .checkpoints import checkpoint_split, self_train_from_checkpoint
from .data import ExperimentData, display_source, experiment_seeds, prepare_cross_site, prepare_data
from .demo import run_demo
from .recipe import (PAPER, PAPER_JOINT, PHANTOM, PHANTOM_QUICK, QUICK_RECIPES, REAL, REAL_QUICK, RECIPES, Recipe,
                     mil_class_weights, recipe_for)
from .methods import (CROSS_SITE_METHODS, METHODS, TRAINED_METHODS, TrainedMethod, build_method_model, initial_weights, method_sets,
                      method_trainer, mil_warning, pretrained_backbone, train_method, warm_start_of)
from .parallel import method_dependencies, parallel_plan
from .runner import (SUPERVISION, Experiment, check_cross_site, check_finding, default_methods, describe_settings,
                     run_experiment, run_experiments, run_folds, summarize_experiments, supervision_of)
from .training import TRAIN_MODES, TrainReport, method_of_mode, train_run

__all__ = ["Recipe", "PHANTOM", "PHANTOM_QUICK", "REAL", "REAL_QUICK", "PAPER", "PAPER_JOINT", "RECIPES",
           "QUICK_RECIPES", "recipe_for", "mil_class_weights", "ExperimentData", "prepare_data", "experiment_seeds",
           "Experiment", "METHODS", "CROSS_SITE_METHODS", "SUPERVISION", "check_cross_site", "default_methods",
           "prepare_cross_site", "display_source", "supervision_of", "TRAINED_METHODS", "TrainedMethod",
           "train_method", "pretrained_backbone", "method_sets", "method_trainer", "build_method_model", "warm_start_of", "mil_warning",
           "TRAIN_MODES", "TrainReport", "initial_weights", "method_of_mode", "train_run", "check_finding",
           "describe_settings", "run_experiment", "run_experiments", "run_folds", "summarize_experiments",
           "method_dependencies", "parallel_plan", "run_demo", "AblationVariant", "AblationResult",
           "TABLE_II_VARIANTS", "run_ablation", "run_ablations", "summarize_ablations", "checkpoint_split",
           "self_train_from_checkpoint"]
