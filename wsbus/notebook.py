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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

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

    def __str__(self) -> str:
        """One line for a chapter's first cell: ``FULL mode: False, device: cpu, backbone: tiny, data: phantom``."""
        return f"FULL mode: {self.full}, device: {self.device.type}, backbone: {self.backbone}, data: {self.data}"

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


# A data spec with a local folder, ``busbra:../shared/data/BUSBRA`` or ``busi:/content/Dataset_BUSI_with_GT``: the
# folder is the machine's, not the reader's. (``https://...`` is not a spec: its path starts with ``//``.)
_DATA_SPEC = re.compile(r"\b([A-Za-z][\w-]*):(?!//)(?:~|\.{1,2})?/[\w.+-]+(?:/[\w.+-]+)*/?")
# A local path: relative to a folder (``./x``, ``../x``, ``~/x``) or absolute with at least two parts (``/a/b``).
_LOCAL_PATH = re.compile(r"(?<![\w:/.~-])(?:(?:~|\.{1,2})/[\w.+-]+(?:/[\w.+-]+)*|/[\w.+-]+(?:/[\w.+-]+)+)/?")
_FENCE = re.compile(r"^\s*(```|~~~)")


def page_markdown(text: str) -> str:
    """Markdown made to sit inside a chapter's page: no level-1 heading, no path of the machine that wrote it.

    A Markdown file written for its own sake (a results summary, a table) starts with its own ``# Title``; inside a
    chapter that would be a second page title. Each level-1 heading becomes a bold line (its text kept), and local
    paths are cut to what a reader can use: a data spec with a folder (``busbra:../shared/data/BUSBRA``) to its
    source name (``busbra``), any other local path (``/home/me/runs/x``, ``../data/y``) to its last part (``x``,
    ``y``). URLs and paths inside the repository (``docs/results/busbra``) are kept, and so is everything inside
    fenced code blocks.

    Taught in ``book/09_real_data.md``.
    """
    lines, fenced = [], False
    for line in str(text).splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            heading = re.match(r"^ {0,3}#(?!#)\s+(.*?)(?:\s+#+)?\s*$", line)
            if heading:
                line = f"**{heading.group(1)}**" if heading.group(1) else ""
            line = _DATA_SPEC.sub(lambda m: m.group(1), line)
            line = _LOCAL_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], line)
        lines.append(line)
    return "\n".join(lines) + ("\n" if str(text).endswith("\n") else "")


def show_markdown(source: Union[str, os.PathLike]) -> None:
    """Display Markdown in a notebook cell, rendered: tables as tables, through :func:`page_markdown`.

    ``source`` is Markdown text, or the path (a ``pathlib.Path``) of a Markdown file, such as the summary files of
    ``docs/results/``. The book renders displayed Markdown like its own text (MyST), so pipe tables render.

    Taught in ``book/09_real_data.md``.
    """
    from IPython.display import Markdown, display

    if isinstance(source, os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such Markdown file")
        source = path.read_text(encoding="utf-8")
    elif not isinstance(source, str):
        raise TypeError(f"show_markdown needs Markdown text or a path, got {type(source).__name__}")
    display(Markdown(page_markdown(source)))
