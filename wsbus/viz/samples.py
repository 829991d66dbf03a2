"""Grids of ultrasound images with their boxes: the data figures of the book.

Taught in ``book/02_data.md``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ..data.formats import CLASSES, Sample

#: Box colours by class index (normal boxes never occur; kept for completeness).
CLASS_COLORS = {0: "#9e9e9e", 1: "#2ca02c", 2: "#d62728"}


#: Width of a figure that fills a book page's text column (about 690 px at matplotlib's 100 dpi) unshrunk.
PAGE_WIDTH_IN = 6.9


def show_samples(samples: Sequence[Sample], ncols: int = 4, ax_size: Optional[float] = None, title: bool = True,
                 *, show_boxes: bool = True, linewidth: float = 1.5, suptitle: Optional[str] = None,
                 max_samples: Optional[int] = None):
    """Draw samples in a grid, boxes coloured by class (benign green, malignant red).

    Parameters
    ----------
    samples : the samples to draw (weak samples are drawn without boxes).
    ncols : number of columns of the grid.
    ax_size : size of one panel in inches; default: the grid fills :data:`PAGE_WIDTH_IN` (a book page's column).
    title : write ``"<id>: <label>"`` above each panel (the label of a weak sample is marked "(weak)").
    show_boxes : draw the boxes of strong samples.
    linewidth : box line width.
    suptitle : optional figure title.
    max_samples : draw at most this many samples (default: all).

    Returns
    -------
    matplotlib ``Figure`` (not shown; call ``fig.savefig(...)`` or let Jupyter display it).

    Notes
    -----
    Taught in ``book/02_data.md``.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    samples = list(samples)[:max_samples] if max_samples is not None else list(samples)
    if not samples:
        raise ValueError("show_samples needs at least one sample")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    ncols = min(ncols, len(samples))
    if ax_size is None:
        ax_size = PAGE_WIDTH_IN / ncols
    nrows = math.ceil(len(samples) / ncols)
    fig = Figure(figsize=(ncols * ax_size, nrows * ax_size * 1.08 if title else nrows * ax_size))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, s in zip(axes, samples):
        ax.imshow(s.image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        if show_boxes and s.boxes is not None:
            for (x1, y1, x2, y2), lab in zip(s.boxes, s.labels):
                # pixel i covers [i - 0.5, i + 0.5] in imshow's coordinates: edge x maps to x - 0.5
                ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False,
                                       edgecolor=CLASS_COLORS[int(lab)], linewidth=linewidth))
        if title:
            weak = "" if s.is_strong else " (weak)"
            ax.set_title(f"{s.id}: {CLASSES[s.image_label]}{weak}", fontsize=8)
        ax.set_axis_off()
    for ax in axes[len(samples):]:
        ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig
