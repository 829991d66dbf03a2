r"""The paper's three losses, one function per formula (Shin et al., TMI 2019, seed 004).

* :func:`rpn_loss` — the RPN loss of Faster R-CNN (taught in ``book/04_rpn_loss.md``),
* :func:`fast_rcnn_loss` — the Fast R-CNN head loss (taught in ``book/03_faster_rcnn.md``),
* :func:`mil_loss` — the weakly supervised loss on the mass of interest (taught in ``book/05_mil_moi.md``).

Every function works on any device and dtype and always returns tensors connected to the autograd graph of
its inputs, also in the degenerate cases (no sampled anchors, no positive anchors, all class weights zero)
where the result is an exact zero rather than ``nan``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["REFERENCE_MIL_WEIGHTS", "rpn_loss", "fast_rcnn_loss", "mil_loss", "mil_loss_unchecked"]

#: Class weights ``(w_N, w_B, w_M)`` of the reference code's MIL loss (``train_bus.py``:
#: ``[0, WS_MAL_PCT, 1 - WS_MAL_PCT]`` with ``WS_MAL_PCT = 933 / 4224 = 0.2209``, the fraction of malignant
#: images in the SNUBH weak set): each class is weighted by the *other* class's frequency, so benign and
#: malignant images contribute equally on average, and normal images not at all.
REFERENCE_MIL_WEIGHTS = (0.0, 0.2209, 0.7791)


def _scalar(value: float, like: Tensor) -> Tensor:
    """A 0-d tensor holding ``value`` with ``like``'s dtype and device, made by a fill on the device (not copied
    from the host: ``torch.tensor(x, device="cuda")`` is a blocking host-to-device copy, which syncs)."""
    return torch.full((), float(value), dtype=like.dtype, device=like.device)


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, or ``numerator`` itself (an exact graph-connected zero) when the
    denominator is zero. Callers guarantee the numerator is zero whenever the denominator is."""
    one = torch.ones_like(denominator)
    return numerator / torch.where(denominator > 0, denominator, one)


def rpn_loss(
    objectness: Tensor,
    box_deltas: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    lam: float = 1.0,
    beta: float = 1.0 / 9.0,
    n_reg: Optional[Union[int, float, Tensor]] = None,
) -> tuple[Tensor, Tensor]:
    r"""Region proposal network loss (Ren et al. 2015, eq. 1; seed 004).

    .. math::

        L(\{p_i\}, \{t_i\}) = \frac{1}{N_{cls}} \sum_i L_{cls}(p_i, p_i^*)
            + \lambda \frac{1}{N_{reg}} \sum_i p_i^* L_{reg}(t_i, t_i^*),

    with :math:`L_{cls}(p, p^*) = -\log[p\,p^* + (1-p)(1-p^*)]` (binary cross-entropy, computed from the
    logit for numerical stability), :math:`L_{reg}(t, t^*) = \sum_{j \in \{x,y,w,h\}} R(t_j - t^*_j)` with
    :math:`R` the smooth-L1 function of parameter ``beta``, :math:`N_{cls}` the number of sampled anchors
    (``labels >= 0``) and :math:`p_i^* = 1` exactly for the positive anchors (``labels == 1``).

    Parameters
    ----------
    objectness : Tensor [A]
        Objectness logits :math:`\operatorname{logit}(p_i)` (any shape with A elements, e.g. [A, 1]).
    box_deltas, regression_targets : Tensor [A, 4]
        Predicted :math:`t_i` and target :math:`t_i^*` box parametrisations. Targets of anchors that are
        not positive are never used and may be non-finite (torchvision encodes a normal image's anchors
        against empty boxes, which gives ``-inf``).
    labels : Tensor [A]
        1 positive, 0 negative, -1 ignored (not in the sampled mini-batch).
    lam : float
        :math:`\lambda`. The paper uses 10 with :math:`N_{reg}` = number of anchor locations; torchvision
        uses 1 with :math:`N_{reg} = N_{cls}`.
    beta : float
        Smooth-L1 transition point; 1/9 in torchvision and in the reference code (``sigma = 3``).
    n_reg : int, float, Tensor or None
        :math:`N_{reg}`. ``None`` (default) uses the number of sampled anchors, which is torchvision's
        normalisation; the paper's is the number of anchor locations (about 2400 for a 600x1000 image).

    Returns
    -------
    (loss_cls, loss_reg) : tuple of scalar Tensors
        Both are exact zeros connected to the graph when no anchor is sampled / none is positive.

    Notes
    -----
    With ``labels`` equal to -1 everywhere except the anchors drawn by torchvision's
    ``BalancedPositiveNegativeSampler``, ``rpn_loss(...)`` equals
    ``torchvision.models.detection.rpn.RegionProposalNetwork.compute_loss`` (tested).

    Taught in ``book/04_rpn_loss.md``.
    """
    objectness = objectness.reshape(-1)
    num_anchors = objectness.numel()
    if box_deltas.shape != (num_anchors, 4) or regression_targets.shape != (num_anchors, 4):
        raise ValueError(
            f"rpn_loss: box_deltas {tuple(box_deltas.shape)} and regression_targets "
            f"{tuple(regression_targets.shape)} must both be [{num_anchors}, 4] (one row per objectness logit)")
    labels = labels.reshape(-1)
    if labels.numel() != num_anchors:
        raise ValueError(f"rpn_loss: {labels.numel()} labels for {num_anchors} objectness logits")

    # Index the sampled and the positive anchors, as torchvision does: cheaper than masking all A anchors (on a
    # CPU, 1.2 ms against 4.5 ms forward + backward for 62k anchors), and the (possibly infinite) targets of the
    # other anchors are never read. The two nonzero() calls are host-device syncs on a GPU, but they come right
    # after the balanced sampler's own nonzero() on the same labels, when the GPU queue has just been drained, so
    # a masked sync-free form would save little there for its higher CPU cost (docs/performance.md).
    sampled = torch.where(labels >= 0)[0]
    positive = torch.where(labels == 1)[0]
    if sampled.numel():
        # -log[p p* + (1 - p)(1 - p*)] for p = sigmoid(logit): binary cross-entropy with logits, mean over N_cls.
        loss_cls = F.binary_cross_entropy_with_logits(objectness[sampled], (labels[sampled] == 1).to(objectness.dtype))
    else:
        loss_cls = objectness.sum() * 0.0
    reg_sum = F.smooth_l1_loss(box_deltas[positive], regression_targets[positive], beta=beta, reduction="sum")
    if n_reg is None:
        denominator = _scalar(sampled.numel(), reg_sum)
    elif isinstance(n_reg, Tensor):
        denominator = n_reg.to(dtype=reg_sum.dtype, device=reg_sum.device)
    else:
        denominator = _scalar(n_reg, reg_sum)
    loss_reg = lam * _safe_divide(reg_sum, denominator)
    return loss_cls, loss_reg


def fast_rcnn_loss(
    class_logits: Tensor,
    box_regression: Tensor,
    labels: Union[Tensor, Sequence[Tensor]],
    regression_targets: Union[Tensor, Sequence[Tensor]],
    beta: float = 1.0 / 9.0,
    weights: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    r"""Fast R-CNN head loss: softmax cross-entropy over the sampled RoIs plus class-specific smooth-L1.

    .. math::

        L = \frac{1}{N} \sum_r -\log \operatorname{softmax}(s_r)_{u_r}
          + \frac{1}{N} \sum_{r: u_r \geq 1} \sum_{j} R\big(t^{u_r}_{r,j} - v_{r,j}\big),

    with :math:`u_r` the class of RoI :math:`r` (0 = background), :math:`t^{u}_r` the box regression
    predicted for class :math:`u`, :math:`v_r` its target and :math:`N` the number of sampled RoIs.
    Identical to ``torchvision.models.detection.roi_heads.fastrcnn_loss`` (tested).

    Parameters
    ----------
    class_logits : Tensor [N, K]
    box_regression : Tensor [N, 4K]
    labels : Tensor [N] (int64) or list of per-image tensors
    regression_targets : Tensor [N, 4] or list of per-image tensors
    beta : float
        Smooth-L1 parameter (torchvision: 1/9).
    weights : Tensor [N], optional
        A loss weight per RoI (ours, for RoIs matched to pseudo-boxes: the teacher's confidence). Both sums then
        weight each RoI's term, still divided by :math:`N`: a weight of 1 everywhere (or None) is the formula above.

    Returns
    -------
    (loss_classifier, loss_box_reg) : tuple of scalar Tensors

    Taught in ``book/03_faster_rcnn.md``.
    """
    if not isinstance(labels, Tensor):
        labels = torch.cat(list(labels), dim=0)
    if not isinstance(regression_targets, Tensor):
        regression_targets = torch.cat(list(regression_targets), dim=0)
    n, num_classes = class_logits.shape
    if labels.shape != (n,) or regression_targets.shape != (n, 4) or box_regression.shape != (n, 4 * num_classes):
        raise ValueError(
            f"fast_rcnn_loss: expected labels [{n}], regression_targets [{n}, 4] and box_regression "
            f"[{n}, {4 * num_classes}], got {tuple(labels.shape)}, {tuple(regression_targets.shape)} and "
            f"{tuple(box_regression.shape)}")
    if weights is not None and weights.shape != (n,):
        raise ValueError(f"fast_rcnn_loss: weights must be [{n}], got {tuple(weights.shape)}")
    if weights is None:
        loss_classifier = F.cross_entropy(class_logits, labels)
    else:
        ce = F.cross_entropy(class_logits, labels, reduction="none")
        loss_classifier = _safe_divide((weights.to(ce.dtype) * ce).sum(), _scalar(n, ce))

    positive = labels > 0
    per_class = box_regression.reshape(n, num_classes, 4)
    chosen = per_class.gather(1, labels.clamp(min=0).view(n, 1, 1).expand(n, 1, 4)).squeeze(1)
    # Background RoIs are never regressed; their targets may be non-finite (images without boxes).
    diff = torch.where(positive[:, None], chosen - regression_targets, torch.zeros_like(chosen))
    if weights is None:
        box_sum = F.smooth_l1_loss(diff, torch.zeros_like(diff), beta=beta, reduction="sum")
    else:
        per_roi = F.smooth_l1_loss(diff, torch.zeros_like(diff), beta=beta, reduction="none").sum(dim=1)
        box_sum = (weights.to(per_roi.dtype) * per_roi).sum()
    loss_box_reg = _safe_divide(box_sum, _scalar(n, box_sum))
    return loss_classifier, loss_box_reg


def mil_loss(
    moi_logits: Tensor,
    image_labels: Tensor,
    class_weights: Optional[Union[Sequence[float], Tensor]] = None,
    reduction: str = "weighted_mean",
) -> Tensor:
    r"""Weakly supervised (MIL) loss on the mass of interest of each weakly labelled image.

    .. math::

        L_{ws}(I) = -\sum_{l \in \{N, B, M\}} w_l \, P^*_l(I) \log p_l(x_{MoI}),

    with :math:`P^*(I)` the one-hot image label and :math:`p(x_{MoI})` the softmax of the Fast R-CNN class
    logits of the image's mass of interest (chosen by :func:`wsbus.mil.select_moi`). Over a batch,

    .. math::

        L_{ws} = \frac{\sum_b w_{y_b} \, (-\log p_{y_b}(x_{MoI,b}))}{\sum_b w_{y_b}},

    the weighted mean of ``torch.nn.functional.cross_entropy(weight=class_weights)``.

    Parameters
    ----------
    moi_logits : Tensor [B, 3]
        Class logits (N, B, M) of each image's mass of interest.
    image_labels : Tensor [B] int64
        0 normal, 1 benign, 2 malignant.
    class_weights : sequence of 3 floats, Tensor [3] or None
        :math:`w_l`; ``None`` is a plain mean. The reference code uses :data:`REFERENCE_MIL_WEIGHTS`
        ``(0, 0.2209, 0.7791)``.
    reduction : {"weighted_mean", "batch_mean"}
        ``"weighted_mean"`` (default) divides by :math:`\sum_b w_{y_b}` as above. ``"batch_mean"`` divides
        by the batch size B instead, which is what the reference TF code computes
        (``reduce_mean(w * cross_entropy)``).

    Returns
    -------
    Tensor
        Scalar loss. When every weight of the batch is zero (for instance a batch of normal images with
        :math:`w_N = 0`) the loss is an exact zero that is still connected to the graph (all gradients
        zero), never ``nan``; an empty batch (B = 0) likewise gives a graph-connected zero.

    Taught in ``book/05_mil_moi.md``.
    """
    if moi_logits.dim() != 2:
        raise ValueError(f"mil_loss: moi_logits must be [B, num_classes], got shape {tuple(moi_logits.shape)}")
    b, num_classes = moi_logits.shape
    image_labels = image_labels.reshape(-1)
    if image_labels.numel() != b:
        raise ValueError(f"mil_loss: {image_labels.numel()} image labels for {b} rows of moi_logits")
    if image_labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"mil_loss: image_labels must be an integer tensor, got {image_labels.dtype}")
    if reduction not in ("weighted_mean", "batch_mean"):
        raise ValueError(f"mil_loss: reduction must be 'weighted_mean' or 'batch_mean', got {reduction!r}")
    image_labels = image_labels.long()
    if b and bool((image_labels.min() < 0) | (image_labels.max() >= num_classes)):
        raise ValueError(f"mil_loss: image labels must lie in [0, {num_classes - 1}], "
                         f"got {sorted(set(image_labels.tolist()))}")
    if class_weights is not None and torch.as_tensor(class_weights).numel() != num_classes:
        raise ValueError(f"mil_loss: {torch.as_tensor(class_weights).numel()} class weights for {num_classes} "
                         f"classes")
    return mil_loss_unchecked(moi_logits, image_labels, class_weights, reduction)


def mil_loss_unchecked(moi_logits: Tensor, image_labels: Tensor,
                       class_weights: Optional[Union[Sequence[float], Tensor]],
                       reduction: str = "weighted_mean", sample_weights: Optional[Tensor] = None) -> Tensor:
    """:func:`mil_loss` without input validation, for callers that validated the labels already (the detector
    checks them where they enter): the label range check is a host-device synchronisation on a GPU.
    ``sample_weights`` [B] (ours) multiply each image's class weight, e.g. 0 for an image whose mass of interest a
    teacher is not confident about."""
    b, num_classes = moi_logits.shape
    image_labels = image_labels.reshape(-1).long()
    if moi_logits.dtype in (torch.float16, torch.bfloat16):
        moi_logits = moi_logits.float()  # as F.cross_entropy under autocast: the loss in float32
    nll = -torch.log_softmax(moi_logits, dim=1).gather(1, image_labels.view(-1, 1)).squeeze(1)
    if class_weights is None:
        weights = torch.ones_like(nll)
    else:
        if isinstance(class_weights, Tensor):
            weights = class_weights.to(dtype=nll.dtype, device=nll.device).reshape(-1)[image_labels]
        else:
            # Python numbers go into torch.where as scalars: no weight table is copied to the device each step.
            w = [float(x) for x in class_weights]
            weights = torch.full_like(nll, w[-1])
            for c in range(len(w) - 1):
                weights = torch.where(image_labels == c, w[c], weights)
    if sample_weights is not None:
        weights = weights * sample_weights.to(dtype=weights.dtype, device=weights.device).reshape(-1)
    # where(): a zero weight must silence its term even if that term is inf.
    weighted = torch.where(weights != 0, weights * nll, torch.zeros_like(nll))
    if reduction == "batch_mean":
        denominator = _scalar(b, nll)
    else:
        denominator = weights.sum()
    return _safe_divide(weighted.sum(), denominator)
