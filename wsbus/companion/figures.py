"""Matplotlib figures for the companion chapters: reconstructions, label-budget curves, ROC curves, confusion
matrices, retrieval galleries, embeddings and domain-shift matrices.

Each function draws into a given ``ax`` (or creates a figure) and returns the figure; the caller shows it.

Taught in ``book/10_autoencoder_pretraining.md``.… ``book/13_transfer_domain_shift.md`` (one figure kind each).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from ..data.formats import CLASSES

__all__ = ["plot_reconstructions", "plot_budget_curves", "plot_roc", "plot_confusion", "plot_retrieval",
           "plot_embedding_2d", "plot_domain_matrix", "plot_image_grid"]


def _plt():
    import matplotlib.pyplot as plt
    return plt


def _img(x) -> np.ndarray:
    x = torch.as_tensor(x).detach().cpu().float()
    return x[0].numpy() if x.ndim == 3 else x.numpy()


def plot_image_grid(images, titles: Optional[Sequence[str]] = None, ncols: int = 8, size: float = 1.4):
    """A grid of grayscale images ``[N, 1, H, W]`` with optional titles.

    Taught in ``book/13_transfer_domain_shift.md``.
    """
    plt = _plt()
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * 1.1), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(_img(images[k]), cmap="gray", vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(titles[k], fontsize=8)
    fig.tight_layout()
    return fig


def plot_reconstructions(images, rows: Mapping[str, torch.Tensor], n: int = 8, size: float = 1.3):
    """Originals in the first row, then one row per model's reconstruction (``{name: [N, 1, H, W]}``).

    Taught in ``book/10_autoencoder_pretraining.md``.
    """
    plt = _plt()
    all_rows = {"input": images, **rows}
    n = min(n, len(images))
    fig, axes = plt.subplots(len(all_rows), n, figsize=(size * n, size * len(all_rows)), squeeze=False)
    for r, (name, imgs) in enumerate(all_rows.items()):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(_img(imgs[c]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    return fig


def plot_budget_curves(study, metric: str = "accuracy", ax=None, xlabel: str = "labelled examples"):
    """Mean metric vs number of labels, one line per method, from a :class:`~wsbus.companion.BudgetStudy`.

    Taught in ``book/10_autoencoder_pretraining.md``.
    """
    plt = _plt()
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5, 3.5))
    for method, by_budget in study.mean(metric).items():
        b = sorted(by_budget)
        ax.plot(b, [by_budget[k] for k in b], marker="o", label=method)
    budgets = sorted({b for d in study.mean(metric).values() for b in d})
    ax.set_xscale("log")
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_roc(curves: Mapping[str, object], ax=None, title: str = ""):
    """ROC curves from ``{name: BinaryMetrics}`` (each has ``fpr``, ``tpr``, ``auc``), with the chance diagonal.

    Taught in ``book/11_cnn_diagnosis.md``.
    """
    plt = _plt()
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1)
    for name, m in curves.items():
        if len(m.fpr):
            ax.plot(m.fpr, m.tpr, lw=2, label=f"{name} (AUC {m.auc:.3f})")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_confusion(confusion: np.ndarray, labels: Sequence[str] = CLASSES, ax=None, title: str = ""):
    """Confusion matrix (rows true, columns predicted) with counts and row-normalised shading.

    Taught in ``book/11_cnn_diagnosis.md``.
    """
    plt = _plt()
    cm = np.asarray(confusion)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(3.8, 3.4))
    frac = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_retrieval(query_images, gallery_images, indices, query_labels, gallery_labels, rows: Sequence[int] = (0,),
                   k: Optional[int] = None, size: float = 1.3):
    """For each chosen query: the query, then its top-k gallery items; green frame = same class, red = not.

    Taught in ``book/12_metric_learning.md``.
    """
    plt = _plt()
    idx = torch.as_tensor(indices).cpu()
    k = idx.shape[1] if k is None else k
    ql, gl = torch.as_tensor(query_labels).cpu(), torch.as_tensor(gallery_labels).cpu()
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(size * (k + 1), size * 1.15 * len(rows)), squeeze=False)
    for r, q in enumerate(rows):
        ax = axes[r, 0]
        ax.imshow(_img(query_images[q]), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"query: {CLASSES[int(ql[q])]}", fontsize=8)
        for j in range(k):
            g = int(idx[q, j])
            ax = axes[r, j + 1]
            ax.imshow(_img(gallery_images[g]), cmap="gray", vmin=0, vmax=1)
            same = int(gl[g]) == int(ql[q])
            for s in ax.spines.values():
                s.set_color("tab:green" if same else "tab:red")
                s.set_linewidth(3)
            ax.set_title(f"#{j + 1} {CLASSES[int(gl[g])]}", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_embedding_2d(embeddings, labels, ax=None, title: str = ""):
    """Scatter of the first two principal components (``torch.pca_lowrank``) coloured by class.

    Taught in ``book/12_metric_learning.md``.
    """
    plt = _plt()
    e = torch.as_tensor(embeddings).detach().cpu().float()
    y = torch.as_tensor(labels).cpu()
    e = e - e.mean(0)
    _, _, v = torch.pca_lowrank(e, q=2, center=False, niter=4)
    p = (e @ v[:, :2]).numpy()
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(3.8, 3.5))
    for c in sorted(set(y.tolist())):
        m = (y == c).numpy()
        ax.scatter(p[m, 0], p[m, 1], s=10, alpha=0.7, label=CLASSES[c])
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_domain_matrix(matrix, metric: str = "accuracy", ax=None):
    """Heat map of a :class:`~wsbus.companion.DomainMatrix` (rows = train domain, columns = test domain).

    Taught in ``book/13_transfer_domain_shift.md``.
    """
    plt = _plt()
    v = matrix.values[metric]
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(v, cmap="viridis", vmin=np.nanmin(v) if np.isfinite(v).any() else 0, vmax=1)
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            ax.text(j, i, f"{v[i, j]:.2f}", ha="center", va="center", color="white")
    ax.set_xticks(range(len(matrix.names)), matrix.names)
    ax.set_yticks(range(len(matrix.names)), matrix.names)
    ax.set_xlabel("test domain")
    ax.set_ylabel("train domain")
    ax.set_title(metric)
    fig.tight_layout()
    return fig
