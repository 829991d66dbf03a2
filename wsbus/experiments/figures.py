"""The figures an experiment writes: training curves and Fig. 6-style detection panels."""
from __future__ import annotations

from typing import Any, List, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..evaluate import froc
from ..models import STRONG_LOSS_KEYS
from ..viz.detections import detection_panels, plot_froc

__all__ = ["moving_average", "loss_figure", "panel_indices", "panels_figure", "froc_figure"]

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average of ``values`` over ``window`` points (a growing window over the first ones)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0 or window <= 1:
        return x
    window = min(window, x.size)
    c = np.cumsum(np.insert(x, 0, 0.0))
    head = c[1:window] / np.arange(1, window)
    return np.concatenate([head, (c[window:] - c[:-window]) / window])


def loss_figure(histories: Mapping[str, Any]) -> Figure:
    """Training curves: the supervised loss L_s and the MIL loss L_ws of every run (moving averages over a
    twentieth of the run), one colour per run."""
    fig = Figure(figsize=(10, 3.8))
    ax_s, ax_w = fig.subplots(1, 2)
    for (name, h), color in zip(histories.items(), _COLORS * 4):
        if h is None or len(h) == 0:
            continue
        steps = np.asarray(h.column("step"))
        window = max(1, len(steps) // 20)
        batches = set(h.column("batch"))
        if batches != {"weak"}:
            l_s = np.sum([h.column(k) for k in STRONG_LOSS_KEYS], axis=0)
            ax_s.plot(steps, np.maximum(moving_average(l_s, window), 1e-6), label=name, color=color, linewidth=1.4)
        if batches != {"strong"}:  # a gated MIL loss can be exactly 0: floored for the log axis
            ax_w.plot(steps, np.maximum(moving_average(h.column("loss_mil"), window), 1e-6), label=name, color=color,
                      linewidth=1.4)
    ax_s.set_title(r"supervised loss $L_s$ (RPN + Fast R-CNN)", fontsize=9)
    ax_w.set_title(r"MIL loss $L_{ws}$ of the mass of interest", fontsize=9)
    for ax in (ax_s, ax_w):
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:   # a panel without a run of its kind (no weak images) stays empty
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def panel_indices(test: Sequence[Any], per_class: int) -> List[int]:
    """The first ``per_class`` benign and malignant test images and one normal one (a fixed, unpicked choice)."""
    picked: List[int] = []
    for label, count in ((1, per_class), (2, per_class), (0, 1)):
        picked += [i for i, s in enumerate(test) if s.image_label == label][:count]
    return picked


def panels_figure(test: Sequence[Any], detections: Mapping[str, Sequence[Mapping[str, Any]]],
                  per_class: int) -> Figure:
    """Fig. 6-style panels: one row per method, the same test images (:func:`panel_indices`) in every row."""
    idx = panel_indices(test, per_class)
    images, dets, titles = [], [], []
    for name, d in detections.items():
        for i in idx:
            images.append(test[i])
            dets.append(d[i])
            titles.append(f"{name}\n{test[i].id}")
    return detection_panels(images, images, dets, ncols=len(idx), titles=titles, ax_size=2.4)


def froc_figure(samples: Sequence[Any], detections: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """One FROC panel (:func:`wsbus.viz.detections.plot_froc`) per method, side by side, on the same images."""
    fig = Figure(figsize=(4.2 * len(detections), 3.8))
    axes = fig.subplots(1, len(detections), squeeze=False)[0]
    for ax, (name, dets) in zip(axes, detections.items()):
        plot_froc(froc(dets, samples), ax=ax)
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return fig
