"""The Fast R-CNN head of the joint detector, with the weak (MIL) branch: :class:`WeakSemiRoIHeads`."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import torch
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import box_iou

from ..losses import fast_rcnn_loss, mil_loss_unchecked
from ..mil import MOI_BY, RuleMap, as_rule_map, select_moi_batch
from ._utils import full_precision, is_weak_target, zero_like_graph

__all__ = ["WeakSemiRoIHeads"]


class WeakSemiRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` with the weak (MIL) branch.

    In training, strong images' proposals are sampled and labelled as in torchvision. Each weak image's proposals
    (its ``weak_proposals`` most object-like ones, counted by :class:`wsbus.models.WeakSemiRPN`) are scored
    without gradient and the mass of interest is chosen by :func:`wsbus.mil.select_moi_batch` with the rule
    ``moi_rules[image_label]`` (:meth:`weak_moi_boxes`). Then the strong RoIs and the weak images' MoI boxes go
    through ``box_roi_pool`` → ``box_head`` → ``box_predictor`` in **one** pass with gradient: the strong rows
    give ``loss_classifier`` and ``loss_box_reg`` (:func:`wsbus.losses.fast_rcnn_loss`), the MoI rows give
    ``loss_mil`` (:func:`wsbus.losses.mil_loss` with ``mil_class_weights`` and ``mil_reduction``).

    Taught in ``book/03_faster_rcnn.md``.
    """

    def __init__(self, *args, moi_rules: Union[None, str, RuleMap, Mapping] = None, moi_by: str = "prob",
                 mil_class_weights: Optional[Sequence[float]] = None, mil_reduction: str = "weighted_mean",
                 **kwargs):
        super().__init__(*args, **kwargs)
        if moi_by not in MOI_BY:
            raise ValueError(f"moi_by must be one of {MOI_BY}, got {moi_by!r}")
        self.moi_rules = as_rule_map(moi_rules)
        self.moi_by = moi_by
        self.mil_class_weights = None if mil_class_weights is None else tuple(float(w) for w in mil_class_weights)
        self.mil_reduction = mil_reduction

    def select_moi(self, weak_logits: list[Tensor], image_labels: Tensor) -> Tensor:
        """MoI index of each weak image within its proposals (no gradient; indices only).
        """
        with torch.no_grad():
            # float32 scores: under autocast the logits are bfloat16/float16, whose rounding would create ties
            return select_moi_batch([full_precision(lg.detach()) for lg in weak_logits],
                                    self.moi_rules.rule_ids(image_labels), by=self.moi_by)

    def weak_moi_boxes(self, features: dict[str, Tensor], weak_proposals: list[Tensor], image_labels: Tensor,
                       image_shapes: list[tuple[int, int]], weak: list[int]) -> list[Tensor]:
        """The mass-of-interest box ``[1, 4]`` of each weak image, chosen **without gradient**.

        The proposals of each weak image are scored by the box head under ``torch.no_grad()``; the MoI is picked
        from those scores. The caller then runs the head again, with
        gradient, on the chosen box only (together with the strong RoIs). The MIL loss depends on the MoI's
        logits alone, so this gives exactly the loss and gradients of scoring all proposals with gradient,
        without storing activations for, or back-propagating RoIAlign through, the proposals that were not
        chosen (what that saves is measured in ``docs/performance.md``).

        ``weak`` gives the position of each weak image in the mini-batch (its feature map).
        """
        n_images = next(iter(features.values())).shape[0]
        candidates: list[Tensor] = [weak_proposals[0].new_zeros((0, 4))] * n_images
        for i, props in zip(weak, weak_proposals):
            if props.shape[0] == 0:
                raise RuntimeError(f"weak image {i} of the mini-batch has no RPN proposal; cannot pick its mass "
                                   f"of interest")
            candidates[i] = props
        with torch.no_grad():
            scored = self.box_predictor(self.box_head(self.box_roi_pool(features, candidates, image_shapes)))[0]
            counts = [candidates[i].shape[0] for i in weak]
            moi = self.select_moi(list(scored.split(counts)), image_labels)  # [W], on the device
            # Gather each image's chosen box from a padded [W, R_max, 4] view of the candidates: the indices
            # never leave the device (no .item()/.tolist() sync, no host-to-device offsets).
            padded = torch.nn.utils.rnn.pad_sequence([candidates[i] for i in weak], batch_first=True)
            chosen = padded[torch.arange(len(weak), device=moi.device), moi]
        return list(chosen.unsqueeze(1).unbind(0))

    def postprocess_detections(self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor],
                               image_shapes: list[tuple[int, int]]):
        """torchvision's post-processing (decode, clip, score threshold, NMS) in float32.

        Under ``torch.autocast`` the head's outputs are bfloat16/float16 and torchvision would decode the boxes
        in that dtype (see :func:`wsbus.models._utils.full_precision`); the detections are float32 whatever the
        autocast state.
        """
        return super().postprocess_detections(full_precision(class_logits), full_precision(box_regression),
                                              proposals, image_shapes)

    def select_training_samples(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]):
        """torchvision's sampling of the strong images' RoIs; for a target with ``ignore_iou = t`` (made from
        pseudo-boxes) a proposal that overlaps one of its boxes by IoU in (t, foreground threshold) is ignored rather
        than labelled background (PCL's rule: a partial overlap with an uncertain box is no evidence of background).
        """
        self._ignore_iou = [t.get("ignore_iou") for t in targets]
        try:
            return super().select_training_samples(proposals, targets)
        finally:
            self._ignore_iou = None

    def assign_targets_to_proposals(self, proposals: list[Tensor], gt_boxes: list[Tensor],
                                    gt_labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """torchvision's matching, then the ignore rule of :meth:`select_training_samples`."""
        matched, labels = super().assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        for j, threshold in enumerate(getattr(self, "_ignore_iou", None) or ()):
            if threshold is not None and gt_boxes[j].numel():
                overlap = box_iou(gt_boxes[j], proposals[j]).amax(dim=0)
                labels[j] = torch.where((labels[j] == 0) & (overlap > threshold), -1, labels[j])
        return matched, labels

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: Optional[list[dict[str, Tensor]]] = None):
        """Eval: torchvision's detections. Training: ``([], {loss_classifier, loss_box_reg, loss_mil})``, see the
        class docstring; the losses of a kind of image absent from the batch are graph-connected zeros.
        """
        if not self.training:
            return super().forward(features, proposals, image_shapes, None)
        if targets is None or len(targets) != len(proposals):
            raise ValueError("RoI heads in training mode need one target per image")
        strong = [i for i, t in enumerate(targets) if not is_weak_target(t)]
        weak = [i for i, t in enumerate(targets) if is_weak_target(t) or t.get("mil")]

        # The RoIs of each image: sampled proposals (strong images), then the mass of interest (weak images).
        parts: list[list[Tensor]] = [[] for _ in proposals]
        labels = regression_targets = weights = image_labels = None
        if strong:
            sampled, matched, labels, regression_targets = self.select_training_samples(
                [proposals[i] for i in strong], [targets[i] for i in strong])
            weights = self.roi_weights([targets[i] for i in strong], matched, labels)
            for i, p in zip(strong, sampled):
                parts[i].append(p)
        if weak:
            image_labels = torch.stack([targets[i]["image_label"] for i in weak]).to(proposals[weak[0]].device)
            for i, box in zip(weak, self.moi_boxes(features, proposals, targets, image_labels, image_shapes, weak)):
                parts[i].append(box)
        rois = [torch.cat(p) if len(p) > 1 else p[0] for p in parts]

        # One head pass with gradient over all of them.
        class_logits, box_regression = self.box_predictor(self.box_head(self.box_roi_pool(features, rois,
                                                                                           image_shapes)))
        counts = [r.shape[0] for r in rois]
        logits, regression = class_logits.split(counts), box_regression.split(counts)

        losses = {}
        if strong:
            n = [len(lab) for lab in labels]
            losses.update(self.strong_loss(torch.cat([logits[i][:k] for i, k in zip(strong, n)]),
                                           torch.cat([regression[i][:k] for i, k in zip(strong, n)]), labels,
                                           regression_targets, weights))
        else:
            losses.update(loss_classifier=zero_like_graph(class_logits), loss_box_reg=zero_like_graph(box_regression))
        if weak:  # the mass of interest is each weak image's last RoI
            given = [targets[i].get("mil_weight") for i in weak]
            sample_weights = None if all(g is None for g in given) else torch.stack(
                [torch.ones((), device=image_labels.device) if g is None else g.reshape(()).float() for g in given])
            losses.update(self.weak_loss(torch.cat([logits[i][-1:] for i in weak]), image_labels, sample_weights))
        else:
            losses.update(loss_mil=zero_like_graph(class_logits))
        return [], losses

    def moi_boxes(self, features: dict[str, Tensor], proposals: list[Tensor], targets: list[dict[str, Tensor]],
                  image_labels: Tensor, image_shapes: list[tuple[int, int]], weak: list[int]) -> list[Tensor]:
        """The mass of interest ``[1, 4]`` of each weak image: the target's ``moi_box`` when a teacher chose it,
        else this head's own choice among the image's proposals (:meth:`weak_moi_boxes`)."""
        own = [j for j, i in enumerate(weak) if "moi_box" not in targets[i]]
        chosen: list[Optional[Tensor]] = [targets[i].get("moi_box") for i in weak]
        if own:
            picked = self.weak_moi_boxes(features, [proposals[weak[j]] for j in own], image_labels[own]
                                         if len(own) < len(weak) else image_labels, image_shapes,
                                         [weak[j] for j in own])
            for j, box in zip(own, picked):
                chosen[j] = box
        return [box.reshape(1, 4).to(proposals[0].dtype) for box in chosen]

    @staticmethod
    def roi_weights(targets: list[dict[str, Tensor]], matched: list[Tensor],
                    labels: list[Tensor]) -> Optional[list[Tensor]]:
        """The loss weight of each sampled RoI: its matched box's ``box_weights`` entry for a positive RoI of a
        target that has them, 1 otherwise; None when no target has weights (the paper's unweighted loss)."""
        if not any("box_weights" in t for t in targets):
            return None
        out = []
        for t, m, lab in zip(targets, matched, labels):
            w = torch.ones(lab.shape, dtype=torch.float32, device=lab.device)
            if "box_weights" in t and t["box_weights"].numel():
                w = torch.where(lab > 0, t["box_weights"].float()[m], w)
            out.append(w)
        return out

    def strong_loss(self, class_logits: Tensor, box_regression: Tensor, labels: list[Tensor],
                    regression_targets: list[Tensor], weights: Optional[list[Tensor]] = None) -> dict[str, Tensor]:
        """``loss_classifier`` and ``loss_box_reg`` of the strong images' sampled RoIs
        (:func:`wsbus.losses.fast_rcnn_loss`, with per-RoI ``weights`` when given)."""
        loss_classifier, loss_box_reg = fast_rcnn_loss(class_logits, box_regression, labels, regression_targets,
                                                       weights=None if weights is None else torch.cat(weights))
        return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    def weak_loss(self, moi_logits: Tensor, image_labels: Tensor,
                  sample_weights: Optional[Tensor] = None) -> dict[str, Tensor]:
        """``loss_mil`` of the weak images' masses of interest (:func:`wsbus.losses.mil_loss`; a target's
        ``mil_weight`` multiplies its image's weight)."""
        # The labels were validated where they entered (wsbus.models.checks.check_targets): the unchecked form
        # skips mil_loss's range check, a host-device sync.
        return {"loss_mil": mil_loss_unchecked(moi_logits, image_labels, self.mil_class_weights,
                                               reduction=self.mil_reduction, sample_weights=sample_weights)}
