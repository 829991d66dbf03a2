r"""Interactive explorer of the mass of interest (MoI), and its static fallback figure.

A weakly labelled image is a *bag* of region proposals; multiple-instance learning trains the detector on the
one proposal that a rule of :mod:`wsbus.mil` picks as the image's mass of interest. These tools show, for real
images and a real detector, which proposal each rule picks:

* :func:`moi_explorer` — an ipywidgets panel: choose an image (dropdown), a rule and whether regions are
  compared by probability or by logit (toggle buttons); see the image with its ground truth, the detector's top
  proposals (faint) and the proposal the rule picks, with that region's class probabilities.
* :func:`static_moi_figure` — the same information as a grid (images x rules) of matplotlib panels, for the
  rendered book where no kernel runs the widget's callbacks.

The proposals and class logits of an image are computed once (:class:`ProposalCache`, through the detector's
``proposal_logits``) and reused by every widget event and every panel; choosing a rule is then
:func:`wsbus.mil.select_moi` on cached logits.

Taught in ``book/05_mil_moi.md``.
"""
from __future__ import annotations

import html
import io
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import ipywidgets as widgets
import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from .data.dataset import DetectionDataset
from .data.formats import CLASSES, Sample
from .distributed import model_device
from .mil import MOI_BY, MOI_RULES, select_moi
from .viz.detections import MOI_COLORS, draw_boxes
from .viz.samples import CLASS_COLORS

__all__ = ["ProposalCache", "MoIChoice", "MoIExplorer", "moi_explorer", "draw_moi", "static_moi_figure"]

#: Outline colour of the faint top proposals (pale yellow, ~55 % opaque).
PROPOSAL_COLOR = "#ffe08a8c"

Device = Union[str, torch.device, None]


def _check_rules(rules: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(rules, str):
        rules = (rules,)
    rules = tuple(rules)
    if not rules:
        raise ValueError("rules is empty: give at least one of " + ", ".join(MOI_RULES))
    unknown = [r for r in rules if r not in MOI_RULES]
    if unknown:
        raise ValueError(f"unknown MoI rule(s) {unknown}; choose from {MOI_RULES}")
    if len(set(rules)) != len(rules):
        raise ValueError(f"rules must not repeat, got {rules}")
    return rules


def _check_by(by: str) -> str:
    if by not in MOI_BY:
        raise ValueError(f"by must be one of {MOI_BY}, got {by!r}")
    return by


class ProposalCache:
    """Proposals and class logits of a detector on a list of samples, computed once per image.

    ``cache[i]`` runs ``model.proposal_logits([image_i])`` the first time (on ``device``, without gradient) and
    returns the stored CPU tensors afterwards; :attr:`calls` counts the detector passes made so far. Weights are
    read when an image is first requested: build a new cache after training the model further.

    Parameters
    ----------
    model : a detector with ``proposal_logits(images) -> [(proposals [R, 4], logits [R, 3]), ...]`` (e.g.
        :class:`wsbus.models.WeakSemiFasterRCNN`).
    samples : the images, as :class:`wsbus.data.Sample` (strong ones have their ground truth drawn).
    device : where the detector runs; default the device of the model's parameters.
    """

    def __init__(self, model: nn.Module, samples: Sequence[Sample], device: Device = None) -> None:
        if not callable(getattr(model, "proposal_logits", None)):
            raise TypeError(f"the model ({type(model).__name__}) has no proposal_logits(images) method; build it "
                            f"with wsbus.models.build_detector")
        samples = list(samples)
        if not samples:
            raise ValueError("no samples: the MoI explorer needs at least one image")
        for k, s in enumerate(samples):
            if not isinstance(s, Sample):
                raise TypeError(f"samples[{k}]: expected a wsbus.data.Sample, got {type(s).__name__}")
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            raise ValueError(f"sample ids must be unique, got duplicates "
                             f"{sorted({i for i in ids if ids.count(i) > 1})}")

        self.model = model
        self.samples = samples
        self.device = model_device(model, device)
        self._images = DetectionDataset(samples, kind="eval")  # float [C, H, W] in [0, 1], no augmentation
        self._store: Dict[int, Tuple[Tensor, Tensor]] = {}
        self.calls = 0

    def __len__(self) -> int:
        return len(self.samples)

    def _index(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"image index must be an integer, got {type(i).__name__}")
        if not 0 <= int(i) < len(self):
            raise IndexError(f"image index {i} out of range for {len(self)} images")
        return int(i)

    def __getitem__(self, i: int) -> Tuple[Tensor, Tensor]:
        """``(proposals [R, 4], logits [R, 3])`` of image ``i``, float32 on the CPU, image coordinates."""
        i = self._index(i)
        if i not in self._store:
            s = self.samples[i]
            image, _ = self._images[i]
            with torch.no_grad():
                out = self.model.proposal_logits([image.to(self.device)])
            self.calls += 1
            if len(out) != 1 or len(out[0]) != 2:
                raise ValueError(f"sample {s.id!r}: proposal_logits must return one (proposals, logits) pair per "
                                 f"image, got {len(out)} item(s)")
            proposals, logits = (t.detach().cpu().float() for t in out[0])
            if proposals.dim() != 2 or proposals.shape[1] != 4:
                raise ValueError(f"sample {s.id!r}: proposals must be [R, 4], got {tuple(proposals.shape)}")
            if logits.dim() != 2 or logits.shape != (proposals.shape[0], len(CLASSES)):
                raise ValueError(f"sample {s.id!r}: logits must be [R, {len(CLASSES)}] for R = "
                                 f"{proposals.shape[0]} proposals, got {tuple(logits.shape)}")
            self._store[i] = (proposals, logits)
        return self._store[i]

    def choose(self, i: int, rule: str, by: str = "prob") -> "MoIChoice":
        """The mass of interest of image ``i`` under ``rule``, chosen by :func:`wsbus.mil.select_moi`."""
        i = self._index(i)
        _check_rules((rule,))
        _check_by(by)
        proposals, logits = self[i]
        s = self.samples[i]
        if proposals.shape[0] == 0:
            raise ValueError(f"sample {s.id!r}: the detector proposed no region, so there is no mass of interest "
                             f"to choose")
        k = select_moi(logits, rule, by=by)
        box = proposals[k]
        iou = math.nan
        if s.boxes is not None and len(s.boxes):
            iou = float(box_iou(box[None], torch.from_numpy(s.boxes).float()).max())
        return MoIChoice(image=i, rule=rule, by=by, index=k, box=box, logits=logits[k],
                         probs=torch.softmax(logits[k], dim=0), iou=iou, n_proposals=int(proposals.shape[0]))


@dataclass(frozen=True)
class MoIChoice:
    """Which proposal a rule picked as an image's mass of interest.

    Attributes
    ----------
    image : index of the image in the explorer's samples.
    rule, by : the rule of :data:`wsbus.mil.MOI_RULES` and ``"prob"`` / ``"logit"``.
    index : the proposal's index among the image's ``n_proposals`` proposals (RPN order, best first).
    box : Tensor [4], the proposal (x1, y1, x2, y2) in image pixels.
    logits, probs : Tensor [3], its class logits and softmax probabilities (normal, benign, malignant).
    iou : its best IoU with a ground-truth box (``nan`` for a weak or a normal image).
    """

    image: int
    rule: str
    by: str
    index: int
    box: Tensor
    logits: Tensor
    probs: Tensor
    iou: float
    n_proposals: int

    def caption(self) -> str:
        """``"N 0.12 · B 0.30 · M 0.58 · IoU 0.71"`` (IoU omitted without ground truth)."""
        p = " · ".join(f"{c[0].upper()} {float(v):.2f}" for c, v in zip(CLASSES, self.probs))
        return p if math.isnan(self.iou) else f"{p} · IoU {self.iou:.2f}"


def draw_moi(ax, sample: Sample, proposals: Tensor, choice: MoIChoice, top_k: int = 10,
             title: Optional[str] = None, fontsize: float = 7.0):
    """Draw one image with its ground truth (dashed), its top ``top_k`` proposals (faint) and the MoI.

    The MoI is outlined in its rule's colour (:data:`wsbus.viz.detections.MOI_COLORS`) and captioned with its
    class probabilities (and IoU with the ground truth) under the image.
    """
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    draw_boxes(ax, sample.image, proposals[:top_k], color=PROPOSAL_COLOR, linewidth=0.7, show_text=False)
    if sample.boxes is not None and len(sample.boxes):
        draw_boxes(ax, None, sample.boxes, sample.labels, linestyle="--", linewidth=1.6, show_text=False)
    draw_boxes(ax, None, choice.box, color=MOI_COLORS.get(choice.rule, "#ffbf00"), linewidth=2.2,
               show_text=False)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel(choice.caption(), fontsize=fontsize)
    if title is not None:
        ax.set_title(title, fontsize=fontsize + 1)
    return ax


def _legend(fig, rules: Sequence[str], with_gt: Sequence[int], top_k: int, ncol: int) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=CLASS_COLORS[c], linestyle="--", linewidth=1.6,
                      label=f"ground truth ({CLASSES[c]})") for c in sorted(set(with_gt))]
    if top_k:
        handles.append(Line2D([], [], color="#e0b000", linewidth=0.7, label=f"top {top_k} proposals"))
    handles += [Line2D([], [], color=MOI_COLORS.get(r, "#ffbf00"), linewidth=2.2, label=f"MoI: {r}")
                for r in rules]
    fig.legend(handles=handles, loc="lower center", ncol=min(ncol, len(handles)), fontsize=7, frameon=False)


def _sample_title(sample: Sample) -> str:
    return f"{sample.id} ({CLASSES[sample.image_label]})"


def static_moi_figure(model: nn.Module, samples: Sequence[Sample], *, device: Device = None,
                      rules: Sequence[str] = MOI_RULES, by: str = "prob", top_k: int = 10,
                      ax_size: float = 2.4, cache: Optional[ProposalCache] = None):
    """A grid of panels, one row per image and one column per rule, showing the MoI each rule picks.

    The static counterpart of :func:`moi_explorer` for pages where widgets cannot run. Each panel shows the image,
    its ground truth (dashed, coloured by class), the top ``top_k`` proposals (faint) and the rule's MoI (in the
    rule's colour) with its class probabilities and IoU under the panel.

    Parameters
    ----------
    model : the detector (``proposal_logits``); ignored when ``cache`` is given.
    samples : the images (rows); ignored when ``cache`` is given.
    device : where the detector runs (default: the model's device).
    rules : the columns, rules of :data:`wsbus.mil.MOI_RULES`.
    by : ``"prob"`` (the paper) or ``"logit"`` (the reference code).
    top_k : number of faint proposals drawn (RPN order).
    ax_size : panel size in inches.
    cache : a :class:`ProposalCache` to reuse (e.g. ``explorer.cache``), so nothing is recomputed.

    Returns
    -------
    matplotlib ``Figure`` (not registered with pyplot: display it as a cell's value or ``fig.savefig(...)``).

    Taught in ``book/05_mil_moi.md``.
    """
    from matplotlib.figure import Figure

    rules = _check_rules(rules)
    by = _check_by(by)
    if cache is None:
        cache = ProposalCache(model, samples, device)
    n, m = len(cache), len(rules)
    fig = Figure(figsize=(m * ax_size, n * ax_size * 1.12 + 0.5))
    axes = fig.subplots(n, m, squeeze=False)
    gt_classes: List[int] = []
    for i, s in enumerate(cache.samples):
        proposals, _ = cache[i]
        if s.labels is not None:
            gt_classes += [int(c) for c in s.labels]
        for j, rule in enumerate(rules):
            ax = axes[i, j]
            draw_moi(ax, s, proposals, cache.choose(i, rule, by), top_k=top_k,
                     title=rule if i == 0 else None)
            if j == 0:
                ax.set_ylabel(_sample_title(s), fontsize=8)
    _legend(fig, rules, gt_classes, top_k, ncol=3)
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))
    return fig


class MoIExplorer(widgets.VBox):
    """The widget :func:`moi_explorer` returns: controls on top, the picture and the MoI's numbers below.

    Attributes
    ----------
    image_select : ``Dropdown`` of the images. rule_select : ``ToggleButtons`` of the rules.
    by_select : ``ToggleButtons`` ``prob`` / ``logit``. picture : ``Image`` (PNG). info : ``HTML`` summary.
    cache : the :class:`ProposalCache`. choice : the current :class:`MoIChoice`.

    Changing a control calls :meth:`update` (also callable directly), which picks the MoI from cached logits
    and redraws.
    """

    def __init__(self, cache: ProposalCache, *, rules: Sequence[str] = MOI_RULES, by: str = "prob",
                 rule: Optional[str] = None, image: int = 0, top_k: int = 10, ax_size: float = 3.6,
                 dpi: int = 80) -> None:
        rules = _check_rules(rules)
        by = _check_by(by)
        if rule is None:
            rule = "most_malignant" if "most_malignant" in rules else rules[0]
        if rule not in rules:
            raise ValueError(f"rule {rule!r} is not among the explorer's rules {rules}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        image = cache._index(image)
        options = [(f"{i}: {_sample_title(s)}", i) for i, s in enumerate(cache.samples)]
        image_select = widgets.Dropdown(options=options, value=image, description="image")
        rule_select = widgets.ToggleButtons(options=list(rules), value=rule, description="rule")
        by_select = widgets.ToggleButtons(options=list(MOI_BY), value=by, description="compare",
                                          tooltips=["softmax probabilities (the paper)",
                                                    "raw logits (the reference code)"])
        picture = widgets.Image(format="png")
        info = widgets.HTML()
        super().__init__(children=[image_select, rule_select, by_select, widgets.HBox([picture, info])])
        self.cache, self.rules, self.top_k, self.ax_size, self.dpi = cache, rules, int(top_k), ax_size, int(dpi)
        self.image_select, self.rule_select, self.by_select = image_select, rule_select, by_select
        self.picture, self.info = picture, info
        self.choice: Optional[MoIChoice] = None
        for control in (image_select, rule_select, by_select):
            control.observe(self._on_change, names="value")
        self.update()

    def _on_change(self, change) -> None:
        self.update()

    def update(self) -> MoIChoice:
        """Pick the MoI for the current controls, redraw, and return the :class:`MoIChoice`."""
        i = int(self.image_select.value)
        choice = self.cache.choose(i, self.rule_select.value, self.by_select.value)
        self.choice = choice
        self.picture.value = self._render(choice)
        self.info.value = self._describe(choice)
        return choice

    def _render(self, choice: MoIChoice) -> bytes:
        from matplotlib.figure import Figure

        s = self.cache.samples[choice.image]
        proposals, _ = self.cache[choice.image]
        fig = Figure(figsize=(self.ax_size * 1.5, self.ax_size + 0.5))
        ax_img, ax_bar = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
        draw_moi(ax_img, s, proposals, choice, top_k=self.top_k, title=_sample_title(s))
        colors = [CLASS_COLORS[c] for c in range(len(CLASSES))]
        ax_bar.bar(range(len(CLASSES)), choice.probs.numpy(), color=colors)
        ax_bar.set_xticks(range(len(CLASSES)), [c[0].upper() for c in CLASSES])
        ax_bar.set_ylim(0, 1)
        ax_bar.set_title("p(class) of the MoI", fontsize=8)
        ax_bar.tick_params(labelsize=7)
        _legend(fig, [choice.rule], [int(c) for c in (s.labels if s.labels is not None else [])], self.top_k,
                ncol=3)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi)
        return buf.getvalue()

    def _describe(self, choice: MoIChoice) -> str:
        s = self.cache.samples[choice.image]
        rows = "".join(f"<tr><td>{c}</td><td style='text-align:right'>{float(p):.3f}</td>"
                       f"<td style='text-align:right'>{float(z):+.2f}</td></tr>"
                       for c, p, z in zip(CLASSES, choice.probs, choice.logits))
        iou = "no ground truth" if math.isnan(choice.iou) else f"{choice.iou:.2f}"
        return (f"<b>{html.escape(s.id)}</b> ({CLASSES[s.image_label]})<br>rule <code>{choice.rule}</code> by "
                f"<code>{choice.by}</code><br>proposal {choice.index} of {choice.n_proposals}<br>"
                f"IoU with ground truth: {iou}<br><table><tr><th>class</th><th>p</th><th>logit</th></tr>"
                f"{rows}</table>")

    def __repr__(self) -> str:
        # Short and free of machine-dependent numbers: this is what a notebook stores as the cell's text output.
        return (f"MoIExplorer({len(self.cache)} images, rules={list(self.rules)}, "
                f"by={self.by_select.value!r})")


def moi_explorer(model: nn.Module, samples: Sequence[Sample], *, device: Device = None,
                 rules: Sequence[str] = MOI_RULES, by: str = "prob", rule: Optional[str] = None, image: int = 0,
                 top_k: int = 10) -> MoIExplorer:
    """An ipywidgets explorer of the mass of interest each MIL rule picks on real proposals.

    Pick an image (dropdown), a rule and ``prob`` / ``logit`` (toggle buttons); the panel shows the image with its
    ground truth (dashed), the detector's top ``top_k`` proposals (faint), the proposal the rule picks (in the rule's
    colour) and that region's class probabilities and logits. Proposals and logits are computed once per image
    (:class:`ProposalCache`); a control change only re-runs :func:`wsbus.mil.select_moi` and redraws.

    Parameters
    ----------
    model : the detector (``proposal_logits``), e.g. from :func:`wsbus.models.build_detector`.
    samples : the images, :class:`wsbus.data.Sample` (ground truth drawn when known).
    device : where the detector runs (default: the model's device).
    rules : the rules offered (default all of :data:`wsbus.mil.MOI_RULES`).
    by : initial comparison, ``"prob"`` (the paper) or ``"logit"`` (the reference code).
    rule : initial rule (default ``"most_malignant"``, the paper's proposal, when offered).
    image : initial image index.
    top_k : number of faint proposals drawn.

    Returns
    -------
    MoIExplorer
        An ``ipywidgets.VBox``; display it as a cell's value. ``explorer.choice`` is the current
        :class:`MoIChoice`; ``explorer.cache`` can be passed to :func:`static_moi_figure`.

    Taught in ``book/05_mil_moi.md``.
    """
    return MoIExplorer(ProposalCache(model, samples, device), rules=rules, by=by, rule=rule, image=image,
                       top_k=top_k)
