"""Notebook set-up shared by every chapter: seeds, threads, device and the ``FULL`` switch.

Taught in ``book/01_introduction.md``.

Every chapter starts with::

    from wsbus.notebook import setup
    cfg = setup()          # CI mode on CPU unless WSBUS_FULL=1; picks Colab's GPU when there is one

``cfg.full`` is True when the environment variable ``WSBUS_FULL`` is ``1`` (the paper-scale version: VGG16,
real data from ``WSBUS_DATA`` such as ``busi:/content/Dataset_BUSI_with_GT``, a GPU). In the default CI mode the
chapter runs on the embedded phantom with the tiny backbone in a minute or two on 2 CPU cores, with fixed seeds
and thread counts so its printed outputs are reproducible (``pytest --nbval`` compares them).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


@dataclass(frozen=True)
class NotebookConfig:
    """What :func:`setup` decided. ``device`` is a ``torch.device``; ``data`` a ``--data`` spec."""

    full: bool
    device: torch.device
    seed: int
    threads: int
    data: str
    backbone: str

    def pick(self, ci, full):
        """``full`` in the FULL (paper-scale) mode, ``ci`` otherwise: ``steps = cfg.pick(300, 60000)``."""
        return full if self.full else ci


def in_colab() -> bool:
    """True inside Google Colab."""
    try:
        import google.colab  # noqa: F401
    except ImportError:
        return False
    return True


def _inline_figures() -> None:
    """Inside a Jupyter kernel, show figures inline even when ``MPLBACKEND=Agg`` is inherited (as in CI)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and getattr(shell, "kernel", None) is not None:
        shell.run_line_magic("matplotlib", "inline")


def setup(seed: int = 0, threads: int = 2, full: Optional[bool] = None, device: Optional[str] = None,
          deterministic: bool = True) -> NotebookConfig:
    """Seed every RNG, fix the thread count, choose the device and read the ``FULL`` switch.

    Parameters
    ----------
    seed : seeds python, numpy and torch.
    threads : torch CPU threads (CI runs on 2 cores; fixing it keeps float reductions reproducible).
    full : force the mode; default reads ``WSBUS_FULL`` (``1`` = paper scale).
    device : force a device; default ``cuda`` when available (Colab GPU runtime), else ``cpu``.
    deterministic : ``torch.use_deterministic_algorithms(True, warn_only=True)``.

    Taught in ``book/01_introduction.md``.
    """
    if full is None:
        full = os.environ.get("WSBUS_FULL", "0").strip().lower() in ("1", "true", "yes")
    if device is None:
        device = os.environ.get("WSBUS_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    _inline_figures()
    torch.set_num_threads(int(threads))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    data = os.environ.get("WSBUS_DATA", "busi:data/Dataset_BUSI_with_GT" if full else "phantom")
    backbone = os.environ.get("WSBUS_BACKBONE", "vgg16" if full else "tiny")
    return NotebookConfig(full=bool(full), device=torch.device(device), seed=seed, threads=int(threads),
                          data=data, backbone=backbone)
