"""Settings that follow the data: how a recipe's ``"auto"`` and per-data-size fields become numbers.

A recipe tuned on one data set must not carry that data set's sizes to the next one. These functions read the
data and give:

* :func:`held_out_count`: a test or validation set's size, a fraction of the images with a floor that keeps a
  confidence interval meaningful;
* :func:`canvas_size`: the detector's canvas (``max_size``), from the training images' shapes at the input scale;
* :func:`anchor_sizes`: three anchor sizes spanning the boxed images' mass sizes at the input scale;
* :func:`epoch_steps`: a run's steps from the number of images it learns from.

:meth:`wsbus.experiments.Recipe.resolve` applies them; the experiment prints and records what they gave.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

from ..models.transform import canvas_side

__all__ = ["held_out_count", "input_scales", "canvas_size", "anchor_sizes", "epoch_steps"]


def held_out_count(n_images: int, fraction: float, floor: int) -> int:
    """``max(floor, round(fraction * n_images))``, and never more than half of the images."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"a held-out fraction must lie in (0, 1), got {fraction!r}")
    return int(min(max(int(floor), int(round(fraction * n_images))), n_images // 2))


def input_scales(shapes: Sequence[Tuple[int, int]], size: int, max_size: Optional[int] = None) -> np.ndarray:
    """The detector's resize factor of each ``(height, width)``: short side to ``size``, long side at most
    ``max_size`` (torchvision's rule)."""
    hw = np.asarray(shapes, dtype=np.float64).reshape(-1, 2)
    scale = size / hw.min(axis=1)
    if max_size is not None:
        scale = np.minimum(scale, max_size / hw.max(axis=1))
    return scale


def canvas_size(shapes: Sequence[Tuple[int, int]], size: int, quantile: float = 0.9, multiple: int = 32) -> int:
    """The canvas side (``max_size``) for images of these ``(height, width)`` shapes at input scale ``size``: the
    ``quantile`` of their long sides when the short side is ``size``, rounded up to ``multiple`` (the images above
    it are scaled down to fit; at least ``size``)."""
    if not len(shapes):
        raise ValueError("canvas_size needs at least one image shape")
    hw = np.asarray(shapes, dtype=np.float64).reshape(-1, 2)
    long_sides = hw.max(axis=1) * (size / hw.min(axis=1))
    return canvas_side(max(int(size), int(math.ceil(float(np.quantile(long_sides, quantile))))), multiple)


def anchor_sizes(box_sides: Sequence[float], multiple: int = 4) -> Tuple[int, int, int]:
    """Three anchor sizes for masses whose sides (``sqrt(w h)`` at the input scale) are ``box_sides``: the median
    ``m`` in the middle, and ``m / 2`` and ``2 m`` widened to the 5th and 95th percentiles when the masses spread
    further (anchor ratios 0.5 / 1 / 2 then match every mass with IoU of about 0.5 or more); multiples of
    ``multiple`` pixels, at least 8."""
    sides = np.asarray(box_sides, dtype=np.float64)
    sides = sides[np.isfinite(sides) & (sides > 0)]
    if sides.size == 0:
        raise ValueError("anchor_sizes needs at least one box")
    m = float(np.median(sides))
    lo = min(m / 2, float(np.quantile(sides, 0.05)))
    hi = max(2 * m, float(np.quantile(sides, 0.95)))
    mid = math.sqrt(lo * hi)

    def snap(x: float) -> int:
        return max(8, int(round(x / multiple)) * multiple)
    out = sorted({snap(lo), snap(mid), snap(hi)})
    while len(out) < 3:  # sizes that rounded together: spread them by factors of 2
        out = sorted(set(out) | {out[-1] * 2})
    return tuple(out[:3])


def epoch_steps(epochs: float, n_images: int, batch: int, floor: int) -> int:
    """Steps that show each of ``n_images`` about ``epochs`` times at ``batch`` images per step, at least
    ``floor``."""
    return int(max(int(floor), math.ceil(float(epochs) * int(n_images) / int(batch))))
