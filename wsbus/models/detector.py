r"""The joint weakly- and semi-supervised Faster R-CNN (Shin et al., TMI 2019), on torchvision's components.

:class:`WeakSemiFasterRCNN` is torchvision's ``GeneralizedRCNN`` (transform → backbone → RPN → RoI heads →
postprocess) with one more clearly named step: the **weak branch**. A training mini-batch may mix

* *strong* images (target ``{"boxes": [K, 4], "labels": [K]}``, K = 0 for a normal scan), which give the four
  Faster R-CNN losses, and
* *weak* images (target ``{"image_label": 0|1|2}``, no boxes), which give only the MIL loss: their top RPN
  proposals (detached, as every proposal in Faster R-CNN) are scored by the box head, the mass of interest is
  picked per image with the rule for its label (:mod:`wsbus.mil`), and its box goes through the same RoI
  pooling and box head pass as the strong images' sampled RoIs; :func:`wsbus.losses.mil_loss` is applied to
  its class logits. Gradients of ``loss_mil`` reach the backbone and the Fast R-CNN head only.

The stages live in their own modules, each overriding only what changes: :mod:`.transform` (grayscale),
:mod:`.rpn` (proposals for all images, the loss from the strong ones), :mod:`.roi_heads` (the weak branch),
:mod:`.checks` (inputs), :mod:`.config` (every setting). :meth:`WeakSemiFasterRCNN.as_torchvision` rebuilds the
plain torchvision ``FasterRCNN`` from the same modules; on strong-only batches both give the same losses under the
same seed (tested).
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops
from torchvision.ops.poolers import initLevelMapper

from ..mil import select_moi_batch
from ._utils import LOSS_KEYS, is_weak_target
from .backbones import build_backbone
from .checks import check_images, check_targets
from .config import DetectorConfig
from .roi_heads import WeakSemiRoIHeads
from .rpn import CachedAnchorGenerator, WeakSemiRPN
from .transform import GrayscaleRCNNTransform

__all__ = ["WeakSemiFasterRCNN", "build_detector", "roi_pool"]


def roi_pool(stride: int, output_size: int, sampling_ratio: int) -> MultiScaleRoIAlign:
    """torchvision's ``MultiScaleRoIAlign`` over the one feature map ``"0"``, with its scale set to ``1 / stride``.

    torchvision infers the scale from the first batch it pools and keeps it: from the padded batch size (a multiple
    of 32) relative to the largest image, which for small images guesses wrong (1/4 instead of 1/8 for 64-px images
    through the stride-8 tiny backbone), and a model reloaded from a checkpoint could then pool at another scale
    than the model that was trained. The backbone's stride is known, so the scale is fixed from it.
    """
    pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=output_size, sampling_ratio=sampling_ratio)
    level = int(round(math.log2(stride)))
    pool.scales, pool.map_levels = [1.0 / stride], initLevelMapper(level, level)
    return pool


class WeakSemiFasterRCNN(GeneralizedRCNN):
    """Faster R-CNN trained jointly on strongly (boxes) and weakly (image label) annotated images.

    Build it with :func:`build_detector`. ``model.backbone``, ``.rpn``, ``.roi_heads`` and ``.transform`` are
    torchvision-compatible modules; ``model.config`` is its :class:`wsbus.models.DetectorConfig` as plain data,
    so that ``build_detector(**model.config)`` rebuilds the same architecture (for a checkpoint).

    Forward (torchvision's convention)
    ----------------------------------
    ``model(images, targets) -> dict`` in training mode, with the keys :data:`wsbus.models.LOSS_KEYS`; ``images``
    is a list of float tensors ``[C, H, W]`` in [0, 1] with C = 1 (or 3, averaged to gray); a strong target is
    ``{"boxes": float [K, 4] (x1, y1, x2, y2), "labels": int64 [K] in 1..num_classes-1}`` (K = 0: normal image),
    a weak target ``{"image_label": int or 0-d tensor}`` (optionally with ``"moi_box"`` [4], a mass of interest
    chosen elsewhere, e.g. by a teacher, which the weak branch then uses instead of choosing its own). A strong
    target made from pseudo-boxes may carry ``box_weights``, ``ignore_iou`` and ``mil`` (see
    :class:`wsbus.models.WeakSemiRoIHeads`). ``model(images) -> list[dict(boxes, labels, scores)]`` in eval mode, in
    input-image coordinates.

    Taught in ``book/03_faster_rcnn.md``.
    """

    def __init__(self, backbone: nn.Module, rpn: WeakSemiRPN, roi_heads: WeakSemiRoIHeads,
                 transform: GeneralizedRCNNTransform, config: Optional[dict] = None):
        super().__init__(backbone, rpn, roi_heads, transform)
        self.config = dict(config or {})
        self.channels_last = False

    @property
    def num_classes(self) -> int:
        """Number of classes including background / normal (3)."""
        return self.roi_heads.box_predictor.cls_score.out_features

    def set_channels_last(self, enabled: bool = True) -> "WeakSemiFasterRCNN":
        """Keep the backbone's weights, and feed it the batched images, in ``torch.channels_last`` layout
        (NHWC), which oneDNN on CPU and cuDNN's tensor-core kernels prefer; ``False`` goes back to NCHW.

        The numbers computed are the same up to floating-point summation order; the state dict is unchanged.
        Returns the model.
        """
        fmt = torch.channels_last if enabled else torch.contiguous_format
        self.backbone.to(memory_format=fmt)
        self.rpn.head.to(memory_format=fmt)
        self.channels_last = bool(enabled)
        return self

    def features(self, tensors: Tensor) -> dict[str, Tensor]:
        """The backbone's feature maps of a padded batch ``[N, C, H, W]``, as torchvision's ``{"0": map}``."""
        if self.channels_last:
            tensors = tensors.contiguous(memory_format=torch.channels_last)
        features = self.backbone(tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        return features

    # ------------------------------------------------------------------ forward
    def forward(self, images, targets=None):
        """Losses (training) or detections (eval); see the class docstring."""
        images = check_images(images)
        original_image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        if self.training:
            targets = check_targets(targets, images, self.num_classes)
            # The transform resizes boxes; a weak image passes its given mass of interest (if any) or no box.
            empty = images[0].new_zeros((0, 4))
            image_list, resized = self.transform(images, [{"boxes": t.get("moi_box", empty)} if is_weak_target(t)
                                                          else t for t in targets])
            targets = [r if not is_weak_target(t) else {**t, "moi_box": r["boxes"]} if "moi_box" in t else t
                       for t, r in zip(targets, resized)]
        else:
            image_list, _ = self.transform(images, None)
            targets = None

        features = self.features(image_list.tensors)
        proposals, proposal_losses = self.rpn(image_list, features, targets)
        detections, detector_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        if self.training:
            losses = {**proposal_losses, **detector_losses}
            return {k: losses[k] for k in LOSS_KEYS}
        return self.transform.postprocess(detections, image_list.image_sizes, original_image_sizes)

    # ------------------------------------------------------------------ inspection
    def proposal_logits(self, images, grad: bool = False, weak: bool = False) -> list[tuple[Tensor, Tensor]]:
        """RPN proposals and their Fast R-CNN class logits, per image, in input-image coordinates.

        Runs in eval mode (the module's mode is restored afterwards) and without gradient unless ``grad=True``,
        with the test-time proposal counts, or with the weak images' counts when ``weak=True`` (the candidates that
        training chooses a mass of interest among). Returns one ``(proposals [R, 4], logits [R, num_classes])``
        pair per image.
        """
        return [(p, lg) for p, lg, _ in self.proposal_predictions(images, grad=grad, weak=weak)]

    def proposal_predictions(self, images, grad: bool = False,
                             weak: bool = False) -> list[tuple[Tensor, Tensor, Tensor]]:
        """:meth:`proposal_logits` with, per proposal, the box head's regressed box of every class: one
        ``(proposals [R, 4], logits [R, num_classes], boxes [R, num_classes, 4])`` triple per image, boxes decoded,
        clipped to the image and in input-image coordinates."""
        images = check_images(images)
        original_image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        was_training = self.training
        self.eval()
        try:
            with torch.set_grad_enabled(grad):
                image_list, _ = self.transform(images, None)
                features = self.features(image_list.tensors)
                with self.rpn.weak_counts(weak):
                    proposals, _ = self.rpn(image_list, features, None)
                heads = self.roi_heads
                logits, regression = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, proposals,
                                                                                           image_list.image_sizes)))
                counts = [len(p) for p in proposals]
                decoded = heads.box_coder.decode(regression.float(), proposals).split(counts)
                out = []
                for props, lg, boxes, size, orig in zip(proposals, logits.split(counts), decoded,
                                                        image_list.image_sizes, original_image_sizes):
                    boxes = box_ops.clip_boxes_to_image(boxes, size)
                    out.append((resize_boxes(props, size, orig), lg,
                                resize_boxes(boxes.reshape(-1, 4), size, orig).reshape(boxes.shape)))
        finally:
            self.train(was_training)
        return out

    def mass_of_interest(self, images, image_labels=None, rule: Optional[str] = None,
                         by: Optional[str] = None, weak: bool = False) -> list[dict[str, Any]]:
        """The mass of interest each image would be trained on: for the widgets, figures and the book.

        Parameters
        ----------
        images : list of [C, H, W] tensors
        image_labels : sequence of int, optional
            Labels choosing the rule per image through the model's rule map (needed unless ``rule`` is given).
        rule : str, optional
            One rule of :data:`wsbus.mil.MOI_RULES` for every image (overrides the rule map).
        by : {"prob", "logit"}, optional
            Defaults to the model's ``moi_by``.
        weak : choose among the weak images' candidates (the ``weak_proposals`` most object-like proposals, as
            training does) instead of the test-time proposals.

        Returns
        -------
        list of dict with ``box`` (Tensor [4], input coordinates), ``index`` (int, into the proposals of
        :meth:`proposal_logits`), ``probs`` (Tensor [num_classes], softmax of the MoI's logits) and ``rule``.
        """
        pairs = self.proposal_logits(images, weak=weak)
        if rule is not None:
            rules = [rule] * len(pairs)
        elif image_labels is not None:
            labels = [int(x) for x in image_labels]
            if len(labels) != len(pairs):
                raise ValueError(f"{len(labels)} image labels for {len(pairs)} images")
            rules = [self.roi_heads.moi_rules[x] for x in labels]
        else:
            raise ValueError("mass_of_interest needs image_labels (rule per label) or one rule")
        idx = select_moi_batch([lg for _, lg in pairs], rules, by=by or self.roi_heads.moi_by).tolist()
        return [{"box": p[i], "index": i, "probs": torch.softmax(lg[i], dim=0), "rule": r}
                for (p, lg), i, r in zip(pairs, idx, rules)]

    def as_torchvision(self) -> FasterRCNN:
        """torchvision's own ``FasterRCNN`` built from deep copies of this model's modules and settings.

        The anchor generator is torchvision's own uncached ``AnchorGenerator`` with the same sizes and ratios, so
        both models compute the same thing on strong images: the reference of the equivalence tests and of
        ``benchmarks/step_time.py``.
        """
        rpn, heads, tr = self.rpn, self.roi_heads, self.transform
        dup = copy.deepcopy
        model = FasterRCNN(
            dup(self.backbone), num_classes=None,
            min_size=tr.min_size, max_size=tr.max_size, image_mean=tr.image_mean, image_std=tr.image_std,
            rpn_anchor_generator=AnchorGenerator(rpn.anchor_generator.sizes, rpn.anchor_generator.aspect_ratios),
            rpn_head=dup(rpn.head),
            rpn_pre_nms_top_n_train=rpn._pre_nms_top_n["training"],
            rpn_pre_nms_top_n_test=rpn._pre_nms_top_n["testing"],
            rpn_post_nms_top_n_train=rpn._post_nms_top_n["training"],
            rpn_post_nms_top_n_test=rpn._post_nms_top_n["testing"],
            rpn_nms_thresh=rpn.nms_thresh, rpn_fg_iou_thresh=rpn.proposal_matcher.high_threshold,
            rpn_bg_iou_thresh=rpn.proposal_matcher.low_threshold,
            rpn_batch_size_per_image=rpn.fg_bg_sampler.batch_size_per_image,
            rpn_positive_fraction=rpn.fg_bg_sampler.positive_fraction, rpn_score_thresh=rpn.score_thresh,
            box_roi_pool=dup(heads.box_roi_pool), box_head=dup(heads.box_head), box_predictor=dup(heads.box_predictor),
            box_score_thresh=heads.score_thresh, box_nms_thresh=heads.nms_thresh,
            box_detections_per_img=heads.detections_per_img,
            box_fg_iou_thresh=heads.proposal_matcher.high_threshold,
            box_bg_iou_thresh=heads.proposal_matcher.low_threshold,
            box_batch_size_per_image=heads.fg_bg_sampler.batch_size_per_image,
            box_positive_fraction=heads.fg_bg_sampler.positive_fraction,
            bbox_reg_weights=heads.box_coder.weights,
        )
        model.transform = dup(tr)
        return model.train(self.training)

    @classmethod
    def from_config(cls, config: DetectorConfig) -> "WeakSemiFasterRCNN":
        """The detector a :class:`wsbus.models.DetectorConfig` describes (randomly initialised unless
        ``config.pretrained``, which downloads torchvision's ImageNet weights for the backbone)."""
        c = config
        body = build_backbone(c.backbone, pretrained=c.pretrained, frozen_stages=c.frozen_stages, norm=c.norm,
                              width=c.width)
        anchor_generator = CachedAnchorGenerator(sizes=(c.anchor_sizes,), aspect_ratios=(c.anchor_ratios,))
        rpn = WeakSemiRPN(
            anchor_generator, RPNHead(body.out_channels, anchor_generator.num_anchors_per_location()[0]),
            # RPN training
            c.rpn_fg_iou_thresh, c.rpn_bg_iou_thresh, c.rpn_batch_size_per_image, c.rpn_positive_fraction,
            # RPN proposals
            c.rpn_pre_nms_top_n, c.rpn_post_nms_top_n, c.rpn_nms_thresh, score_thresh=c.rpn_score_thresh,
            # the paper's loss normalisation and the weak images' proposals
            n_reg=c.rpn_n_reg, lam=c.rpn_lam, weak_pre_nms_top_n=c.weak_pre_nms_top_n,
            weak_post_nms_top_n=c.weak_proposals,
        )
        roi_heads = WeakSemiRoIHeads(
            roi_pool(body.stride, c.roi_output_size, c.sampling_ratio),
            TwoMLPHead(body.out_channels * c.roi_output_size ** 2, c.representation_size),
            FastRCNNPredictor(c.representation_size, c.num_classes),
            # Fast R-CNN training
            c.box_fg_iou_thresh, c.box_bg_iou_thresh, c.box_batch_size_per_image, c.box_positive_fraction,
            c.bbox_reg_weights,
            # Fast R-CNN inference
            c.box_score_thresh, c.box_nms_thresh, c.box_detections_per_img,
            # weak branch
            moi_rules=c.moi_rules, moi_by=c.moi_by, mil_class_weights=c.mil_class_weights,
            mil_reduction=c.mil_reduction,
        )
        transform = GrayscaleRCNNTransform(c.min_size, c.max_size, list(c.image_mean), list(c.image_std))
        return cls(body, rpn, roi_heads, transform, config=c.as_dict())


def build_detector(backbone: str = "vgg16", num_classes: int = 3, pretrained: bool = False,
                   min_size: Optional[int] = None, max_size: Optional[int] = None, channels_last: bool = False,
                   **options: Any) -> WeakSemiFasterRCNN:
    """Build the joint weakly/semi-supervised Faster R-CNN.

    Parameters
    ----------
    backbone : {"vgg16", "resnet18", "resnet50", "tiny"}
        VGG16 conv5_3 (the paper), ResNet C4 (stride 16), or a small CPU network (stride 8).
    num_classes : int
        Including background / normal: 3 for (normal, benign, malignant).
    pretrained : bool
        torchvision ImageNet weights for the backbone (downloads; tests always use ``False``).
    min_size, max_size : int, optional
        Resizing of torchvision's transform: the short side to ``min_size``, the long side at most ``max_size``;
        every image is then padded to a fixed ``max_size`` square canvas (:mod:`wsbus.models.transform`), so its
        detections do not depend on the other images of its batch. ``None`` takes the backbone's preset: the
        reference 600 / 1000 for vgg16 and resnets, 128 / 128 for tiny (the phantom's side).
    channels_last : bool
        Run the backbone in the ``torch.channels_last`` memory format (:meth:`WeakSemiFasterRCNN.set_channels_last`).
        A speed option, not part of the architecture: it is not recorded in ``config`` and checkpoints load
        either way.
    **options
        Any other field of :class:`wsbus.models.DetectorConfig` (anchors, RPN and box-head settings, the weak
        branch's ``moi_rules``, ``moi_by``, ``mil_class_weights``, ``mil_reduction``, ``weak_proposals``, the
        backbone's ``frozen_stages`` and ``norm``, ``image_mean`` / ``image_std``); an unknown one is a
        ``TypeError``.

    Returns
    -------
    WeakSemiFasterRCNN
        With ``model.config`` = the resolved :class:`~wsbus.models.DetectorConfig` as plain data (JSON- and
        ``weights_only``-safe), so ``build_detector(**model.config)`` rebuilds it. The architecture does not depend
        on ``pretrained`` once the config is resolved (``norm``, ``frozen_stages`` and the grayscale statistics are
        recorded), so ``build_detector(**{**config, "pretrained": False})`` rebuilds a pretrained model offline
        for ``load_state_dict``.

    Taught in ``book/03_faster_rcnn.md``.
    """
    config = DetectorConfig.preset(backbone, num_classes=num_classes, pretrained=pretrained, min_size=min_size,
                                   max_size=max_size, **options)
    model = WeakSemiFasterRCNN.from_config(config)
    if channels_last:
        model.set_channels_last(True)
    return model
