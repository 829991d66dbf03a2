"""Detection figures: Fig. 6-style panels, pseudo-box precision against rank, bootstrap histograms.

Boxes are coloured by class everywhere (benign green, malignant red, as :mod:`wsbus.viz.samples`); ground truth is
dashed, detections solid with their class and score, and mass-of-interest (MoI) boxes dotted in one colour per
rule. Every function returns a :class:`matplotlib.figure.Figure` that is not registered with pyplot: save it with
``fig.savefig(...)`` or let Jupyter display it as a cell's value.

Taught in ``book/08_evaluation.md`` and ``book/07_self_training.md``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..data.formats import CLASSES, Sample
from ..evaluate import bootstrap_means, corloc, paired_test, percentile_interval
from .samples import CLASS_COLORS

#: Colours of the mass-of-interest rules (:data:`wsbus.mil.MOI_RULES`); other names cycle through ``_EXTRA``.
MOI_COLORS: Dict[str, str] = {
    "most_benign": "#1f77b4",          # blue
    "most_discriminative": "#ff7f0e",  # orange
    "most_malignant": "#9467bd",       # purple
    "most_abnormal": "#17becf",        # cyan
}
_EXTRA = ("#e377c2", "#bcbd22", "#8c564b", "#7f7f7f")
_METHOD_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")

ImageLike = Union[np.ndarray, torch.Tensor, Sample]


# --------------------------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------------------------
def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _to_image(image: ImageLike, where: str) -> np.ndarray:
    """An array imshow can draw: H x W (gray) or H x W x 3, uint8 or float in [0, 1]."""
    if isinstance(image, Sample):
        return image.image
    img = _to_numpy(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[2] not in (1, 3):
        img = np.moveaxis(img, 0, -1)  # torch layout C x H x W
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"{where}: image must be H x W, H x W x 3 or C x H x W with C in (1, 3), "
                         f"got shape {tuple(img.shape)}")
    if img.dtype == np.uint8:
        return img
    if not np.issubdtype(img.dtype, np.number):
        raise TypeError(f"{where}: image must be numeric, got dtype {img.dtype}")
    img = img.astype(np.float32)
    if img.size and (np.nanmin(img) < 0.0 or np.nanmax(img) > 1.0):
        raise ValueError(f"{where}: a float image must lie in [0, 1] (got [{np.nanmin(img):.3g}, "
                         f"{np.nanmax(img):.3g}]); pass uint8 for 0..255")
    return img


def _imshow(ax: Any, img: np.ndarray) -> None:
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", vmin=0, vmax=255 if img.dtype == np.uint8 else 1, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")


def _to_boxes(boxes: Any, where: str) -> np.ndarray:
    b = _to_numpy(boxes).astype(np.float64)
    if b.size == 0:
        return b.reshape(0, 4)
    if b.ndim == 1 and b.size == 4:
        b = b.reshape(1, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{where}: boxes must have shape [K, 4] (x1, y1, x2, y2), got {tuple(b.shape)}")
    if not np.all(np.isfinite(b)):
        raise ValueError(f"{where}: boxes have non-finite coordinates")
    return b


def _optional_vector(x: Any, n: int, where: str, key: str) -> Optional[np.ndarray]:
    if x is None:
        return None
    v = _to_numpy(x).reshape(-1)
    if v.size != n:
        raise ValueError(f"{where}: {key} has {v.size} entries for {n} boxes")
    return v


def _targets(item: Any, where: str, keys: Sequence[str]) -> Dict[str, Any]:
    if isinstance(item, Sample):
        return {"boxes": item.boxes if item.boxes is not None else np.zeros((0, 4)),
                "labels": item.labels if item.labels is not None else np.zeros(0, np.int64)}
    if not isinstance(item, Mapping):
        raise TypeError(f"{where} must be a dict with {list(keys)} or a Sample, got {type(item).__name__}")
    missing = [k for k in keys if k not in item]
    if missing:
        raise ValueError(f"{where} is missing {missing}")
    return dict(item)


def _class_color(label: int) -> str:
    return CLASS_COLORS.get(int(label), "#ffbf00")


def _moi_color(rule: str, order: List[str]) -> str:
    if rule in MOI_COLORS:
        return MOI_COLORS[rule]
    if rule not in order:
        order.append(rule)
    return _EXTRA[order.index(rule) % len(_EXTRA)]


# --------------------------------------------------------------------------------------------------------------
# Boxes on one axes
# --------------------------------------------------------------------------------------------------------------
def draw_boxes(ax: Any, image: Optional[ImageLike], boxes: Any, labels: Any = None, scores: Any = None,
               color: Optional[str] = None, *, linestyle: str = "-", linewidth: float = 1.8,
               show_text: bool = True, fontsize: float = 8.0) -> Any:
    """Draw an image (optional) and boxes on a matplotlib axes.

    Parameters
    ----------
    ax : matplotlib Axes.
    image : H x W / H x W x 3 array (uint8, or float in [0, 1]), a tensor [C, H, W], a :class:`Sample`, or
        ``None`` to draw boxes over what the axes already shows.
    boxes : [K, 4] (x1, y1, x2, y2) in pixel coordinates, array or tensor (any device).
    labels : [K] class indices; boxes are then coloured by class (benign green, malignant red) and captioned.
    scores : [K] scores, appended to the caption (``"malignant 0.93"``).
    color : one colour for every box (overrides the class colours).
    linestyle, linewidth : box outline style (ground truth is drawn dashed, detections solid).
    show_text : write the caption above each box when there is a label or a score.
    fontsize : caption size.

    Returns
    -------
    The axes.

    Notes
    -----
    Box edges are in continuous pixel coordinates (pixel ``i`` covers ``[i, i + 1]``), which imshow places at
    ``i - 0.5``; boxes are shifted by half a pixel so they sit on the pixels they enclose.
    """
    from matplotlib.patches import Rectangle

    where = "draw_boxes"
    if image is not None:
        img = _to_image(image, where)
        _imshow(ax, img)
    b = _to_boxes(boxes, where)
    lab = _optional_vector(labels, len(b), where, "labels")
    sc = _optional_vector(scores, len(b), where, "scores")
    for k, (x1, y1, x2, y2) in enumerate(b):
        c = color if color is not None else (_class_color(lab[k]) if lab is not None else "#ffbf00")
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=c,
                               linewidth=linewidth, linestyle=linestyle))
        parts = []
        if lab is not None:
            parts.append(CLASSES[int(lab[k])] if 0 <= int(lab[k]) < len(CLASSES) else f"class {int(lab[k])}")
        if sc is not None:
            parts.append(f"{float(sc[k]):.2f}")
        if show_text and parts:
            # Caption above the box, or just inside it when the box touches the top of the image.
            top = min(ax.get_ylim())
            inside = y1 - top < 0.08 * abs(np.diff(ax.get_ylim())[0])
            ax.text(x1 - 0.5, y1 + (0.5 if inside else -1.5), " ".join(parts), color="white", fontsize=fontsize,
                    va="top" if inside else "bottom", ha="left",
                    bbox=dict(facecolor=c, edgecolor="none", alpha=0.8, pad=1.0), clip_on=True)
    return ax


# --------------------------------------------------------------------------------------------------------------
# Fig. 6-style panels
# --------------------------------------------------------------------------------------------------------------
def _legend(fig: Any, used_gt: set, used_det: set, used_moi: List[tuple], score_thresh: float,
            width: float) -> None:
    """The legend under :func:`detection_panels`' panels (one entry per style in use), then the layout.

    About 2.3 in per legend column at 8 pt: a figure ``width`` inches wide gets fewer columns and more rows.
    """
    from matplotlib.lines import Line2D

    handles = []
    for c in sorted(used_gt):
        handles.append(Line2D([], [], color=_class_color(c), linestyle="--", linewidth=2.0,
                              label=f"ground truth {CLASSES[c]}"))
    for c in sorted(used_det):
        name = CLASSES[c] if 0 <= c < len(CLASSES) else f"class {c}"
        handles.append(Line2D([], [], color=_class_color(c), linestyle="-", linewidth=1.5,
                              label=f"detection {name} (score >= {score_thresh:g})"))
    for rule, color in used_moi:
        handles.append(Line2D([], [], color=color, linestyle=":", linewidth=2.0, label=f"MoI {rule}"))
    if not handles:
        fig.tight_layout()
        return
    legend_cols = max(1, min(len(handles), 3, int(width / 2.3)))
    legend_rows = math.ceil(len(handles) / legend_cols)
    fig.legend(handles=handles, loc="lower center", ncol=legend_cols, fontsize=8, frameon=False)
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, min(0.5, (0.17 * legend_rows + 0.08) / height), 1, 1))


def detection_panels(images: Sequence[ImageLike], ground_truth: Optional[Sequence[Any]],
                     detections: Optional[Sequence[Mapping[str, Any]]],
                     moi: Optional[Sequence[Optional[Mapping[str, Any]]]] = None, ncols: int = 3,
                     titles: Optional[Sequence[str]] = None, score_thresh: float = 0.5,
                     max_detections: Optional[int] = None, mark_corloc: bool = True,
                     ax_size: float = 2.3, iou_thresh: float = 0.5) -> Any:
    """Fig. 6-style pictures: per image, the ground truth, the detections and optionally the MoI boxes.

    Ground-truth boxes are dashed and detections solid, both coloured by class (benign green, malignant red);
    detections are captioned with class and score. ``moi`` adds, per image, the box each MIL rule chose, dotted in
    the rule's colour (:data:`MOI_COLORS`), e.g. ``{"most_malignant": box, "most_abnormal": box}``. A legend
    under the panels explains every style in use.

    Parameters
    ----------
    images : the images (arrays, tensors [C, H, W] or :class:`Sample`).
    ground_truth : per image dict(boxes, labels) or :class:`Sample`, or ``None`` (not drawn).
    detections : per image dict(boxes, labels, scores) (torchvision's output), or ``None``.
    moi : per image ``{rule: box [4]}`` or ``None``.
    ncols : panels per row.
    titles : one title per image; default ``"<i>: <image class>"`` (the ``Sample`` id when available).
    score_thresh : draw detections with ``score >= score_thresh`` only (CorLoc's threshold).
    max_detections : draw at most this many detections per image (highest scores first).
    mark_corloc : append "CorLoc hit" / "miss" to the title of images with a mass (:func:`wsbus.evaluate.corloc`
        at ``iou_thresh`` and ``score_thresh``).
    ax_size : size of one panel in inches. The default, 3 columns of 2.3 in, makes a figure 6.9 in wide: at
        matplotlib's 100 dpi it fits a book's text column (about 690 px) without being shrunk, so its 8-pt captions
        stay legible. Show more images as more rows (or one figure per method), not as more columns.

    Returns
    -------
    matplotlib Figure.

    Taught in ``book/08_evaluation.md``.
    """
    from matplotlib.figure import Figure

    images = list(images)
    n = len(images)
    if n == 0:
        raise ValueError("detection_panels needs at least one image")
    for name, seq in (("ground_truth", ground_truth), ("detections", detections), ("moi", moi),
                      ("titles", titles)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} images")
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}")
    if max_detections is not None and max_detections < 0:
        raise ValueError(f"max_detections must be >= 0, got {max_detections}")

    gts = None if ground_truth is None else [_targets(g, f"ground_truth[{i}]", ("boxes", "labels"))
                                             for i, g in enumerate(ground_truth)]
    dets = None if detections is None else [_targets(d, f"detections[{i}]", ("boxes", "labels", "scores"))
                                            for i, d in enumerate(detections)]
    hit: Dict[int, bool] = {}
    if mark_corloc and gts is not None and dets is not None:
        res = corloc(dets, gts, iou_thresh=iou_thresh, score_thresh=score_thresh)
        hit = dict(zip(res.image_index.tolist(), res.per_image.tolist()))

    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(ncols * ax_size, nrows * ax_size * 1.1 + 0.6))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    used_gt, used_det, used_moi = set(), set(), []
    rule_order: List[str] = []
    for i, (ax, image) in enumerate(zip(axes, images)):
        _imshow(ax, _to_image(image, f"images[{i}]"))
        image_class = None
        if gts is not None:
            g_boxes = _to_boxes(gts[i]["boxes"], f"ground_truth[{i}]")
            g_labels = _to_numpy(gts[i]["labels"]).reshape(-1).astype(np.int64)
            if len(g_labels) != len(g_boxes):
                raise ValueError(f"ground_truth[{i}]: {len(g_boxes)} boxes but {len(g_labels)} labels")
            draw_boxes(ax, None, g_boxes, g_labels, color=None, linestyle="--", linewidth=2.0, show_text=False)
            used_gt.update(int(c) for c in g_labels)
            image_class = int(g_labels.max()) if len(g_labels) else 0
        if dets is not None:
            d_boxes = _to_boxes(dets[i]["boxes"], f"detections[{i}]")
            d_labels = _to_numpy(dets[i]["labels"]).reshape(-1).astype(np.int64)
            d_scores = _to_numpy(dets[i]["scores"]).reshape(-1).astype(np.float64)
            if not len(d_boxes) == len(d_labels) == len(d_scores):
                raise ValueError(f"detections[{i}]: {len(d_boxes)} boxes, {len(d_labels)} labels and "
                                 f"{len(d_scores)} scores")
            order = np.argsort(-d_scores, kind="stable")
            order = order[d_scores[order] >= score_thresh][:max_detections]
            draw_boxes(ax, None, d_boxes[order], d_labels[order], d_scores[order], linestyle="-", linewidth=1.5)
            used_det.update(int(c) for c in d_labels[order])
        if moi is not None and moi[i] is not None:
            if not isinstance(moi[i], Mapping):
                raise TypeError(f"moi[{i}] must be a dict rule -> box, got {type(moi[i]).__name__}")
            for rule, box in moi[i].items():
                c = _moi_color(str(rule), rule_order)
                draw_boxes(ax, None, _to_boxes(box, f"moi[{i}][{rule!r}]"), color=c, linestyle=":", linewidth=2.0)
                if rule not in used_moi:
                    used_moi.append(rule)
        if titles is not None:
            title = str(titles[i])
        else:
            ident = images[i].id if isinstance(images[i], Sample) else (
                ground_truth[i].id if ground_truth is not None and isinstance(ground_truth[i], Sample) else str(i))
            title = f"{ident}: {CLASSES[image_class]}" if image_class is not None else ident
        if i in hit:
            title += " · CorLoc " + ("hit" if hit[i] else "miss")
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    for ax in axes[n:]:
        ax.set_axis_off()

    _legend(fig, used_gt, used_det, [(rule, _moi_color(str(rule), rule_order)) for rule in used_moi],
            score_thresh, ncols * ax_size)
    return fig


# --------------------------------------------------------------------------------------------------------------
# Self-training: precision of the pseudo-boxes against rank
# --------------------------------------------------------------------------------------------------------------
def plot_precision_vs_rank(confidences: Any, correct: Any, fractions: Sequence[float] = (0.5, 0.75),
                           ax_size: float = 4.0) -> Any:
    """Pseudo-box precision of the top-k weak images, ranked by confidence, against k.

    Self-training (paper Table IV) moves the most confident weak images, with their pseudo-boxes, to the strong
    set. This curve shows how precise those pseudo-boxes are (``correct``: IoU > 0.5 with the hidden ground
    truth) when the top k images are moved, with the paper's cut-offs (50 %, 75 % of the weak set) marked and
    the precision of the whole set as a dotted baseline. Ties in confidence keep their input order.

    Parameters
    ----------
    confidences : [N] confidence of each weak image's pseudo-box.
    correct : [N] bool, whether that pseudo-box is correct.
    fractions : cut-offs to mark, as fractions of N.

    Returns
    -------
    matplotlib Figure.

    Taught in ``book/07_self_training.md``.
    """
    from matplotlib.figure import Figure

    conf = _to_numpy(confidences).astype(np.float64).reshape(-1)
    ok = _to_numpy(correct).reshape(-1)
    if conf.size == 0:
        raise ValueError("plot_precision_vs_rank needs at least one image")
    if ok.size != conf.size:
        raise ValueError(f"confidences has {conf.size} entries but correct has {ok.size}")
    if not np.all(np.isfinite(conf)):
        raise ValueError("confidences has NaN or infinite values")
    if not np.all(np.isin(ok.astype(np.float64), (0.0, 1.0))):
        raise ValueError("correct must be boolean (or 0/1)")
    for q in fractions:
        if not 0.0 < float(q) <= 1.0:
            raise ValueError(f"fractions must lie in (0, 1], got {q!r}")
    ok = ok.astype(bool)
    order = np.argsort(-conf, kind="stable")
    k = np.arange(1, conf.size + 1)
    precision = np.cumsum(ok[order]) / k

    fig = Figure(figsize=(ax_size * 1.4, ax_size))
    ax = fig.subplots()
    ax.plot(k, 100 * precision, color="#1f77b4", linewidth=1.8, label="precision of the top-k pseudo-boxes")
    ax.axhline(100 * ok.mean(), color="#7f7f7f", linestyle=":", label=f"all {conf.size} images: {100 * ok.mean():.1f}%")
    for q in fractions:
        kq = max(1, int(round(float(q) * conf.size)))
        ax.axvline(kq, color="#d62728", linestyle="--", linewidth=1.0)
        ax.annotate(f"top {100 * float(q):g}%: {100 * precision[kq - 1]:.1f}%", (kq, 100 * precision[kq - 1]),
                    textcoords="offset points", xytext=(-4, -14), ha="right", fontsize=8, color="#d62728")
        ax.plot([kq], [100 * precision[kq - 1]], "o", color="#d62728", markersize=4)
    ax.set_xlabel("k: weak images moved to the strong set (most confident first)")
    ax.set_ylabel("pseudo-box precision [%]")
    ax.set_xlim(0.5, conf.size + 0.5)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------------------
# Bootstrap distributions
# --------------------------------------------------------------------------------------------------------------
def _bootstrap_edges(outcomes: np.ndarray, boots: np.ndarray, bins: int, lo_all: float, hi_all: float) -> np.ndarray:
    """Histogram edges, in percent, for the bootstrap means ``boots`` of the per-image ``outcomes``.

    Integer outcomes (0/1 for CorLoc) on ``n`` images give means on the lattice ``k / n`` only: the bins are then
    whole multiples of ``1 / n`` wide, an odd number ``m`` of lattice values each, with edges half-way between
    lattice values (at ``(k - 0.5) / n``) and each bin centred on one value ``k / n``. Evenly spaced edges would
    alias with the lattice: some bins would hold no possible value (empty gaps) and others two (double height).
    Other outcomes get ``bins`` evenly spaced bins over ``[lo_all, hi_all]`` (percent), shared by all methods.
    """
    n = outcomes.size
    if n and np.all(np.isfinite(outcomes)) and np.all(outcomes == np.round(outcomes)):
        k_lo, k_hi = int(np.round(boots.min() * n)), int(np.round(boots.max() * n))
        count = k_hi - k_lo + 1                  # lattice values in the range of the resamples
        m = -(-count // max(1, bins))            # lattice values per bin, so that there are at most `bins` bins
        m += 1 - m % 2                           # odd: the bin is centred on its middle lattice value
        n_bins = -(-count // m)
        return 100 * (k_lo - 0.5 + m * np.arange(n_bins + 1)) / n
    return np.linspace(lo_all - 0.5, hi_all + 0.5, bins + 1)


def plot_bootstrap(per_image: Mapping[str, Any], n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                   bins: int = 30, ax_size: float = 4.0) -> Any:
    """Histograms of bootstrap CorLoc for one or more methods, with observed value and CI.

    Each method's per-image outcomes are resampled with :func:`wsbus.evaluate.bootstrap_means`; methods
    evaluated on the same images (same length) share their resamples, as in :func:`wsbus.evaluate.paired_test`.
    Solid lines mark the observed CorLoc, dashed lines the percentile CI. With exactly two methods on the same
    images the title reports the difference and McNemar's exact p-value.

    Parameters
    ----------
    per_image : ``{method name: per-image outcomes}`` (e.g. ``CorLocResult.per_image``).
    n_boot, level, seed : as in :func:`wsbus.evaluate.bootstrap_ci`.
    bins : largest number of histogram bins per method. With integer (e.g. 0/1) outcomes on ``n`` images, whose
        bootstrap means are multiples of ``1 / n``, the bins follow that lattice: edges at ``(k - 0.5) / n``, each
        bin centred on a value ``k / n`` (one value per bin unless the range needs more than ``bins`` of them).

    Returns
    -------
    matplotlib Figure.

    Taught in ``book/08_evaluation.md``.
    """
    from matplotlib.figure import Figure

    if not isinstance(per_image, Mapping) or not per_image:
        raise TypeError("per_image must be a non-empty dict {method name: per-image outcomes}")
    names = [str(k) for k in per_image]
    arrays = [_to_numpy(v).astype(np.float64).reshape(-1) for v in per_image.values()]
    same = len({a.size for a in arrays}) == 1
    if same:
        boots = np.atleast_2d(bootstrap_means(np.stack(arrays), n_boot=n_boot, seed=seed))
    else:
        boots = np.stack([bootstrap_means(a, n_boot=n_boot, seed=seed) for a in arrays])

    fig = Figure(figsize=(ax_size * 1.5, ax_size))
    ax = fig.subplots()
    lo_all, hi_all = 100 * boots.min(), 100 * boots.max()
    for j, (name, a, b) in enumerate(zip(names, arrays, boots)):
        c = _METHOD_COLORS[j % len(_METHOD_COLORS)]
        lo, hi = percentile_interval(b, level)
        ax.hist(100 * b, bins=_bootstrap_edges(a, b, bins, lo_all, hi_all), color=c, alpha=0.45,
                label=f"{name}: {100 * a.mean():.2f}% [{100 * lo:.2f}–{100 * hi:.2f}]")
        ax.axvline(100 * a.mean(), color=c, linewidth=2.0)
        for v in (lo, hi):
            ax.axvline(100 * v, color=c, linewidth=1.0, linestyle="--")
    title = f"Bootstrap CorLoc ({n_boot} resamples of the test images, {100 * level:g}% CI)"
    binary = all(np.isin(a, (0.0, 1.0)).all() for a in arrays)
    if same and binary and len(arrays) == 2:
        r = paired_test(arrays[0], arrays[1], n_boot=n_boot, seed=seed, level=level)
        title += (f"\n{names[0]} − {names[1]} = {100 * r.difference:+.2f} pp, "
                  f"McNemar p = {r.mcnemar_pvalue:.3g}")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("CorLoc [%]")
    ax.set_ylabel("resamples")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------------------
# FROC curves
# --------------------------------------------------------------------------------------------------------------
_FROC_STYLE = {"benign": (CLASS_COLORS[1], "-"), "malignant": (CLASS_COLORS[2], "-"), "overall": ("#000000", "--")}


def plot_froc(result: Any, ax: Any = None, fp_rates: Optional[Sequence[float]] = None) -> Any:
    """FROC curves of a :class:`wsbus.evaluate.FROCResult`: sensitivity against false positives per image.

    One curve per class (benign green, malignant red, as the boxes elsewhere) and the overall curve (black,
    dashed), each through its points from the highest threshold to the lowest; the legend gives the images
    behind each class. The false-positive axis is logarithmic, as usual for FROC curves; points with no false
    positive (which a log axis cannot show) are drawn at the left edge, a decade below the smallest positive
    rate, with open markers. A class without images is left out.

    Parameters
    ----------
    result : :class:`wsbus.evaluate.FROCResult` (from :func:`wsbus.evaluate.froc`).
    ax : matplotlib Axes to draw into; a new figure is made when ``None``.
    fp_rates : optional false-positive rates to mark with vertical dotted lines (e.g. ``FROC_FP_RATES``).

    Returns
    -------
    matplotlib Figure (the one holding ``ax`` when given).

    Taught in ``book/08_evaluation.md``.
    """
    from ..metrics.froc import FROCResult

    if not isinstance(result, FROCResult):
        raise TypeError(f"plot_froc needs a FROCResult (from wsbus.evaluate.froc), got {type(result).__name__}")
    own = ax is None
    if own:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.6, 4.2))
        ax = fig.subplots()
    else:
        fig = ax.figure
    keys = [k for k in ("benign", "malignant", "overall") if not np.all(np.isnan(result.sensitivity[k]))]
    positive = [result.fp_per_image[k][result.fp_per_image[k] > 0] for k in keys]
    positive = np.concatenate(positive) if positive else np.zeros(0)
    floor = float(positive.min()) / 10 if positive.size else 0.01
    for key in keys:
        color, style = _FROC_STYLE[key]
        fp = np.where(result.fp_per_image[key] > 0, result.fp_per_image[key], floor)
        sens = 100 * result.sensitivity[key]
        label = "overall (mean of the classes)" if key == "overall" else f"{key} (n={result.n_images[key]})"
        ax.plot(fp, sens, style, color=color, linewidth=1.8, marker="o", markersize=3.5, label=label)
        zero = result.fp_per_image[key] == 0
        if zero.any():
            ax.plot(fp[zero], sens[zero], "o", markersize=5, markerfacecolor="white", color=color)
    for r in fp_rates or ():
        ax.axvline(float(r), color="#7f7f7f", linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    any_zero = any(bool(np.any(result.fp_per_image[k] == 0)) for k in keys)
    ax.set_xlabel("false positives per image" + (" (open markers: no false positive)" if any_zero else ""))
    ax.set_ylabel("sensitivity (CorLoc) [%]")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(f"FROC, IoU > {result.iou_thresh:g}, score thresholds "
                 f"{result.thresholds[0]:g} to {result.thresholds[-1]:g}", fontsize=9)
    if keys:
        ax.legend(fontsize=8, loc="upper left")
    if own:
        fig.tight_layout()
    return fig
