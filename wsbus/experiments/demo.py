"""``wsbus demo``: the paper's main finding on the embedded phantom, in minutes on a CPU.

It is :func:`wsbus.experiments.run_experiment` on ``phantom`` with the :data:`~wsbus.experiments.PHANTOM` recipe
(:data:`~wsbus.experiments.PHANTOM_QUICK` with ``quick=True``): one code path for the demo and for real data.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

import torch

from .recipe import PHANTOM, PHANTOM_QUICK, Recipe
from .runner import run_experiment

__all__ = ["run_demo"]


def run_demo(out_dir: Union[str, os.PathLike] = "wsbus_demo", quick: bool = False,
             device: Union[str, torch.device, None] = None, seed: int = 0, progress: bool = True,
             recipe: Optional[Recipe] = None, threads: Optional[int] = 1) -> Dict[str, Any]:
    """Train strong-full, strong-few, weak-only, joint and joint + self-training on the phantom; compare them.

    Parameters
    ----------
    out_dir : output folder (see :func:`wsbus.experiments.run_experiment` for what it receives).
    quick : the smoke preset :data:`~wsbus.experiments.PHANTOM_QUICK` (well under a minute).
    device, seed, progress, threads : as in :func:`~wsbus.experiments.run_experiment`.
    recipe : a custom recipe (overrides ``quick``).

    Returns
    -------
    dict : the content of ``results.json`` (``{"methods": [{"name", "n_strong", "n_weak", "corloc": {"overall",
    "benign", "malignant"}, "ci": [lo, hi], "p_value", ...}], ...}``).

    Taught in ``book/01_introduction.md``.
    """
    chosen = recipe if recipe is not None else (PHANTOM_QUICK if quick else PHANTOM)
    return run_experiment("phantom", out_dir, recipe=chosen, seed=seed, device=device, threads=threads,
                          progress=progress)
