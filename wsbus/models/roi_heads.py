"""The Fast R-CNN head of the joint detector, with the weak (MIL) branch: :class:`WeakSemiRoIHeads`."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import torch
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads

from ..losses import fast_rcnn_loss, mil_loss_unchecked
from ..mil import MOI_BY, RuleMap, as_rule_map, select_moi_batch
from ._utils import full_precision, is_weak_target, zero_like_graph

__all__ = ["WeakSemiRoIHeads"]


class WeakSemiRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` with the weak (MIL) branch.

    In training, strong images' proposals are sampled and labelled as in torchvision. Each weak image's proposals
    (its ``weak_proposals`` most object-like ones, counted by :class:`wsbus.models.WeakSemiRPN`) are scored
    without gradient and the mass of interest is chosen by :func:`wsbus.mil.select_moi_batch` with the rule
    ``rule_map[image_label]`` (:meth:`weak_moi_boxes`). Then the strong RoIs and the weak images' MoI boxes go
    through ``box_roi_pool`` → ``box_head`` → ``box_predictor`` in **one** pass with gradient: the strong rows
    give ``loss_classifier`` and ``loss_box_reg`` (:func:`wsbus.losses.fast_rcnn_loss`), the MoI rows give
    ``loss_mil`` (:func:`wsbus.losses.mil_loss` with ``mil_class_weights`` and ``mil_reduction``).
    """

    def __init__(self, *args, rule_map: Union[None, str, RuleMap, Mapping] = None, moi_by: str = "prob",
                 mil_class_weights: Optional[Sequence[float]] = None, mil_reduction: str = "weighted_mean",
                 **kwargs):
        super().__init__(*args, **kwargs)
        if moi_by not in MOI_BY:
            raise ValueError(f"moi_by must be one of {MOI_BY}, got {moi_by!r}")
        self.rule_map = as_rule_map(rule_map)
        self.moi_by = moi_by
        self.mil_class_weights = None if mil_class_weights is None else tuple(float(w) for w in mil_class_weights)
        self.mil_reduction = mil_reduction

    def select_moi(self, weak_logits: list[Tensor], image_labels: Tensor) -> Tensor:
        """MoI index of each weak image within its proposals (no gradient; indices only).
        """
        with torch.no_grad():
            # float32 scores: under autocast the logits are bfloat16/float16, whose rounding would create ties
            return select_moi_batch([full_precision(lg.detach()) for lg in weak_logits],
                                    self.rule_map.rule_ids(image_labels), by=self.moi_by)

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
        weak = [i for i, t in enumerate(targets) if is_weak_target(t)]

        # The RoIs of each image: sampled proposals (strong images), the mass of interest (weak images).
        rois = list(proposals)
        labels = regression_targets = image_labels = None
        if strong:
            sampled, _, labels, regression_targets = self.select_training_samples(
                [proposals[i] for i in strong], [targets[i] for i in strong])
            for i, p in zip(strong, sampled):
                rois[i] = p
        if weak:
            image_labels = torch.stack([targets[i]["image_label"] for i in weak]).to(proposals[weak[0]].device)
            for i, box in zip(weak, self.weak_moi_boxes(features, [proposals[i] for i in weak], image_labels,
                                                        image_shapes, weak)):
                rois[i] = box

        # One head pass with gradient over all of them.
        class_logits, box_regression = self.box_predictor(self.box_head(self.box_roi_pool(features, rois,
                                                                                           image_shapes)))
        counts = [r.shape[0] for r in rois]
        logits, regression = class_logits.split(counts), box_regression.split(counts)

        losses = {}
        if strong:
            losses.update(self.strong_loss(torch.cat([logits[i] for i in strong]),
                                           torch.cat([regression[i] for i in strong]), labels, regression_targets))
        else:
            losses.update(loss_classifier=zero_like_graph(class_logits), loss_box_reg=zero_like_graph(box_regression))
        if weak:
            losses.update(self.weak_loss(torch.cat([logits[i] for i in weak]), image_labels))
        else:
            losses.update(loss_mil=zero_like_graph(class_logits))
        return [], losses

    def strong_loss(self, class_logits: Tensor, box_regression: Tensor, labels: list[Tensor],
                    regression_targets: list[Tensor]) -> dict[str, Tensor]:
        """``loss_classifier`` and ``loss_box_reg`` of the strong images' sampled RoIs
        (:func:`wsbus.losses.fast_rcnn_loss`)."""
        loss_classifier, loss_box_reg = fast_rcnn_loss(class_logits, box_regression, labels, regression_targets)
        return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    def weak_loss(self, moi_logits: Tensor, image_labels: Tensor) -> dict[str, Tensor]:
        """``loss_mil`` of the weak images' masses of interest (:func:`wsbus.losses.mil_loss`)."""
        # The labels were validated where they entered (wsbus.models.checks.check_targets): the unchecked form
        # skips mil_loss's range check, a host-device sync.
        return {"loss_mil": mil_loss_unchecked(moi_logits, image_labels, self.mil_class_weights,
                                               reduction=self.mil_reduction)}
