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

Only the methods that must change are overridden: the RPN's ``forward`` (proposals for all images, loss for
the strong ones) and ``compute_loss`` (through :func:`wsbus.losses.rpn_loss`), the RoI heads' ``forward``
(strong sampling + weak MoI in one head pass, losses through :mod:`wsbus.losses`), and the transform's
grayscale handling. :meth:`WeakSemiFasterRCNN.as_torchvision` rebuilds the plain torchvision ``FasterRCNN`` from
the same modules; on strong-only batches both give the same losses under the same seed (tested).

Taught in ``book/03_faster_rcnn.md`` (architecture), ``book/04_rpn_loss.md`` and ``book/05_mil_moi.md``.
"""
from __future__ import annotations

import copy
import math
import operator
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import MultiScaleRoIAlign

from .. import losses as wl
from ..mil import MOI_BY, RuleMap, as_rule_map, select_moi_batch
from .backbones import BACKBONES, build_backbone

__all__ = [
    "LOSS_KEYS", "PRESETS", "build_detector", "WeakSemiFasterRCNN", "WeakSemiRPN", "WeakSemiRoIHeads",
    "GrayscaleRCNNTransform", "CachedAnchorGenerator", "is_weak_target",
]

#: The keys of the training loss dict, always all present (zeros connected to the graph when a batch has no
#: image of the kind that produces a loss).
LOSS_KEYS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mil")

# Reference values, from the authors' TF code (github syshin1014/wssdl_bus):
#   code/lib/fast_rcnn/config.py: TRAIN.SCALES=(600,), MAX_SIZE=1000; TRAIN.RPN_PRE/POST_NMS_TOP_N=12000/2000,
#     TEST.RPN_PRE/POST_NMS_TOP_N=6000/300, RPN_NMS_THRESH=0.7 (train and test), TEST.NMS=0.3 (detections),
#     RPN_POSITIVE/NEGATIVE_OVERLAP=0.7/0.3, RPN_BATCHSIZE=256, RPN_FG_FRACTION=0.5, TRAIN.BATCH_SIZE=128 RoIs,
#     FG_FRACTION=0.25, FG_THRESH=0.5, BG_THRESH_HI=0.5 / LO=0.0; PIXEL_MEANS=68.274, PIXEL_STDS=52.802 (BUS).
#   code/lib/networks/VGGnet_train_bus.py: conv1-2 trainable=False, _feat_stride=16, anchor_scales=[8,16,32]
#     on a 16-px base anchor = sizes 128, 256, 512 with ratios 0.5, 1, 2; roi_pool 7x7 at 1/16; fc6/fc7 of 512.
# Differences we keep from torchvision: RoIAlign (sampling_ratio 2) instead of RoIPool, no dropout in the fc
# head, box-regression weights (10, 10, 5, 5) with smooth-L1 (the reference regresses unnormalised targets
# with L1), proposals smaller than 1e-3 px dropped (the reference drops those under 16 px).
_REFERENCE = dict(
    min_size=600, max_size=1000,
    anchor_sizes=(128, 256, 512), anchor_ratios=(0.5, 1.0, 2.0),
    representation_size=512, roi_output_size=7, sampling_ratio=2,
    rpn_pre_nms_top_n={"training": 12000, "testing": 6000},
    rpn_post_nms_top_n={"training": 2000, "testing": 300},
    rpn_nms_thresh=0.7, rpn_fg_iou_thresh=0.7, rpn_bg_iou_thresh=0.3,
    rpn_batch_size_per_image=256, rpn_positive_fraction=0.5, rpn_score_thresh=0.0,
    box_fg_iou_thresh=0.5, box_bg_iou_thresh=0.5, box_batch_size_per_image=128, box_positive_fraction=0.25,
    box_score_thresh=0.05, box_nms_thresh=0.3, box_detections_per_img=100, bbox_reg_weights=None,
)
#: Per-backbone defaults of :func:`build_detector`. ``tiny`` is sized for 128-192 px phantom images on a CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "vgg16": dict(_REFERENCE),
    "resnet18": dict(_REFERENCE),
    "resnet50": dict(_REFERENCE, representation_size=1024),
    "tiny": dict(
        # Proposal and RoI counts scaled down with the image area (128 px vs 600x1000 px): on a CPU the NMS of
        # the RPN and RoIAlign's backward dominate a step, and both grow with these counts.
        _REFERENCE, min_size=128, max_size=256, anchor_sizes=(16, 32, 64), representation_size=128,
        rpn_pre_nms_top_n={"training": 1000, "testing": 600},
        rpn_post_nms_top_n={"training": 300, "testing": 100},
        box_batch_size_per_image=64,
    ),
}
# Grayscale normalisation: the reference's BUS pixel statistics (68.274 / 255, 52.802 / 255) from scratch; the
# channel means of ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) with pretrained weights.
_GRAY_STATS = {False: ((68.274 / 255,), (52.802 / 255,)), True: ((0.449,), (0.226,))}


def is_weak_target(target: Mapping[str, Any]) -> bool:
    """True for a weak target (no ``"boxes"``, or ``boxes=None``); it must then carry ``"image_label"``.

    Taught in ``book/06_joint_training.md``.
    """
    return target.get("boxes") is None


def _full_precision(t: Tensor) -> Tensor:
    """``t`` in float32 when it is a half/bfloat16 tensor (from an autocast region), unchanged otherwise.

    Box coordinates need float32: bfloat16 has 8 significant bits, so a coordinate near 600 px would be rounded
    to a multiple of 4 px (float16: of 0.5 px). torchvision's ``BoxCoder.decode`` casts the anchors / proposals
    to the dtype of the predicted deltas, so under ``torch.autocast`` every proposal and detection would lose
    that precision; decoding float32 deltas keeps the boxes exact and costs nothing measurable.
    """
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _zero_like_graph(*tensors: Tensor) -> Tensor:
    """An exact scalar zero connected to the graph of ``tensors`` (so every parameter that produced them gets
    a zero gradient, which keeps DDP's reducer and optimisers' step counts consistent)."""
    total = tensors[0].sum() * 0.0
    for t in tensors[1:]:
        total = total + t.sum() * 0.0
    return _full_precision(total)  # float32 under autocast, like the losses it stands in for


class GrayscaleRCNNTransform(GeneralizedRCNNTransform):
    """torchvision's ``GeneralizedRCNNTransform`` for grayscale models.

    Two changes: a 3-channel image is averaged to one gray channel before normalisation (the backbones take
    one channel), and a single ``min_size`` does not draw a random number per image (torchvision draws one to
    pick among several training sizes even when there is only one, which would make the random state, and so
    the anchor/RoI sampling of the strong images, depend on how many weak images share their mini-batch).

    Taught in ``book/03_faster_rcnn.md``.
    """

    def normalize(self, image: Tensor) -> Tensor:
        """Average RGB to gray when the model is grayscale, then torchvision's normalisation.

        Taught in ``book/03_faster_rcnn.md``.
        """
        if image.shape[0] == 3 and len(self.image_mean) == 1:
            image = image.mean(dim=0, keepdim=True)
        if image.shape[0] != len(self.image_mean):
            raise ValueError(f"expected {len(self.image_mean)}-channel (or RGB) images, got shape "
                             f"{tuple(image.shape)}")
        if len(self.image_mean) == 1:
            if not image.is_floating_point():
                return super().normalize(image)  # torchvision's error message for integer images
            # Python scalars: torchvision builds the mean and std tensors on the device for every image, two
            # blocking host-to-device copies (syncs on a GPU) per image.
            return (image - float(self.image_mean[0])) / float(self.image_std[0])
        return super().normalize(image)

    def torch_choice(self, k: list[int]) -> int:
        """The training size; draws a random number only when there are several. Taught in
        ``book/03_faster_rcnn.md``."""
        if len(k) == 1:
            return k[0]
        return super().torch_choice(k)


def _rows(t: Tensor, idx: list[int], n: int) -> Tensor:
    """``t[idx]`` along dim 0 without a host-to-device copy of the index: a slice (a view) when ``idx`` is a
    contiguous run, else a stack of views. ``n`` is ``t.shape[0]``."""
    if len(idx) == n:
        return t
    if idx == list(range(idx[0], idx[0] + len(idx))):
        return t[idx[0]: idx[0] + len(idx)]
    return torch.stack([t[i] for i in idx])


class CachedAnchorGenerator(AnchorGenerator):
    """torchvision's ``AnchorGenerator`` that computes the anchors of a feature-map geometry once.

    torchvision rebuilds the cell anchors, moves them to the device and tiles them over the feature map on every
    forward (about 20 small ops, and a host-to-device copy of the cell anchors, per step). The anchors depend only
    on the feature-map sizes, the padded batch size of the images, the dtype and the device, so they are cached
    under that key (least recently used first out, ``cache_size`` entries; moving the module with ``.to()``
    empties the cache). Every image of a batch shares the padded size, hence one anchor tensor, which the
    returned list holds once per image (callers only read anchors).

    Anchors are always float32 or float64: under ``torch.autocast`` the feature maps are bfloat16/float16, and
    torchvision would build the anchors in that dtype (coordinates rounded to multiples of 4 px near 600 px).

    Taught in ``book/03_faster_rcnn.md``.
    """

    def __init__(self, *args, cache_size: int = 16, **kwargs):
        super().__init__(*args, **kwargs)
        self.cache_size = int(cache_size)
        self._anchor_cache: "OrderedDict[tuple, Tensor]" = OrderedDict()

    def _apply(self, fn, *args, **kwargs):
        self._anchor_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        """One ``[A, 4]`` anchor tensor per image (the same cached tensor for every image of the batch).

        Taught in ``book/03_faster_rcnn.md``.
        """
        grid_sizes = tuple(tuple(int(x) for x in fm.shape[-2:]) for fm in feature_maps)
        image_size = tuple(int(x) for x in image_list.tensors.shape[-2:])
        dtype = feature_maps[0].dtype if feature_maps[0].dtype in (torch.float32, torch.float64) else torch.float32
        device = feature_maps[0].device
        key = (grid_sizes, image_size, dtype, device)
        anchors = self._anchor_cache.get(key)
        if anchors is None:
            # torchvision's AnchorGenerator.forward, for one image.
            strides = [[torch.empty((), dtype=torch.int64, device=device).fill_(image_size[0] // g[0]),
                        torch.empty((), dtype=torch.int64, device=device).fill_(image_size[1] // g[1])]
                       for g in grid_sizes]
            self.set_cell_anchors(dtype, device)
            anchors = torch.cat(self.grid_anchors([list(g) for g in grid_sizes], strides))
            self._anchor_cache[key] = anchors
            while len(self._anchor_cache) > self.cache_size:
                self._anchor_cache.popitem(last=False)
        else:
            self._anchor_cache.move_to_end(key)
        return [anchors] * len(image_list.image_sizes)


class WeakSemiRPN(RegionProposalNetwork):
    """torchvision's ``RegionProposalNetwork`` that proposes for every image but trains on strong images only.

    Extra arguments: ``n_reg`` (``"torchvision"``: :math:`N_{reg}` = sampled anchors, or ``"paper"``: number of
    anchor locations, as in the paper's eq. 1), ``lam`` (:math:`\\lambda`; default 1 for torchvision, 10 for the
    paper), ``beta`` (smooth-L1), and the pre/post-NMS counts used for weak images (the test-time settings by
    default: weak images are used like test images, only their top proposals are ever scored).

    Targets are a list with one dict per image; weak images' dicts have no ``"boxes"``.

    Taught in ``book/04_rpn_loss.md``.
    """

    def __init__(self, *args, n_reg: str = "torchvision", lam: Optional[float] = None, beta: float = 1.0 / 9.0,
                 weak_pre_nms_top_n: Optional[int] = None, weak_post_nms_top_n: Optional[int] = None, **kwargs):
        super().__init__(*args, **kwargs)
        if n_reg not in ("torchvision", "paper"):
            raise ValueError(f"rpn n_reg must be 'torchvision' or 'paper', got {n_reg!r}")
        self.n_reg = n_reg
        self.lam = float(lam) if lam is not None else (10.0 if n_reg == "paper" else 1.0)
        self.beta = beta
        self.weak_pre_nms_top_n = weak_pre_nms_top_n or self._pre_nms_top_n["testing"]
        self.weak_post_nms_top_n = weak_post_nms_top_n or self._post_nms_top_n["testing"]
        self._weak_phase = False

    def pre_nms_top_n(self) -> int:
        """Proposals kept before NMS: training / testing count, or the weak images' count while filtering
        their proposals. Taught in ``book/04_rpn_loss.md``."""
        return self.weak_pre_nms_top_n if self._weak_phase else super().pre_nms_top_n()

    def post_nms_top_n(self) -> int:
        """Proposals kept after NMS (see :meth:`pre_nms_top_n`). Taught in ``book/04_rpn_loss.md``."""
        return self.weak_post_nms_top_n if self._weak_phase else super().post_nms_top_n()

    @contextmanager
    def _weak(self) -> Iterator[None]:
        self._weak_phase = True
        try:
            yield
        finally:
            self._weak_phase = False

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor], n_reg: Optional[float] = None) -> tuple[Tensor, Tensor]:
        """Sample anchors with torchvision's balanced sampler, then :func:`wsbus.losses.rpn_loss`.

        Taught in ``book/04_rpn_loss.md``.
        """
        pos_masks, neg_masks = self.fg_bg_sampler(labels)
        pos = torch.cat(pos_masks).bool()
        neg = torch.cat(neg_masks).bool()
        sampled_labels = torch.where(pos, 1, torch.where(neg, 0, -1))
        return wl.rpn_loss(objectness.flatten(), pred_bbox_deltas, sampled_labels,
                           torch.cat(regression_targets, dim=0), lam=self.lam, beta=self.beta, n_reg=n_reg)

    def forward(self, images: ImageList, features: dict[str, Tensor],
                targets: Optional[list[dict[str, Tensor]]] = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals for every image (strong: training counts, weak: ``weak_*`` counts, eval: testing counts)
        and, in training, ``loss_objectness`` / ``loss_rpn_box_reg`` from the strong images only (graph-connected
        zeros when there is none).

        Taught in ``book/04_rpn_loss.md``.
        """
        features_list = list(features.values())
        objectness, pred_bbox_deltas = self.head(features_list)
        anchors = self.anchor_generator(images, features_list)
        num_images = len(anchors)
        shapes = [o[0].shape for o in objectness]
        num_anchors_per_level = [s[0] * s[1] * s[2] for s in shapes]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        # Proposals never carry gradient (Faster R-CNN's approximate joint training); the MIL loss
        # therefore cannot reach the RPN. They are decoded and ranked in float32 also under autocast.
        proposals = self.box_coder.decode(_full_precision(pred_bbox_deltas.detach()), anchors).view(num_images, -1, 4)
        scores = _full_precision(objectness.detach())

        if not self.training:
            boxes, _ = self.filter_proposals(proposals, scores, images.image_sizes, num_anchors_per_level)
            return boxes, {}
        if targets is None or len(targets) != num_images:
            raise ValueError(f"RPN in training mode needs one target per image ({num_images}), got "
                             f"{None if targets is None else len(targets)}")
        strong = [i for i, t in enumerate(targets) if not is_weak_target(t)]
        weak = [i for i, t in enumerate(targets) if is_weak_target(t)]
        boxes: list[Optional[Tensor]] = [None] * num_images
        for idx, phase in ((strong, False), (weak, True)):
            if not idx:
                continue
            # Rows of the strong / weak images, by slicing or stacking views (no index tensor is copied to
            # the device).
            props = _rows(proposals, idx, num_images)
            obj = _rows(scores.view(num_images, -1), idx, num_images).reshape(-1, 1)
            sizes = [images.image_sizes[i] for i in idx]
            if phase:
                with self._weak():
                    found, _ = self.filter_proposals(props, obj, sizes, num_anchors_per_level)
            else:
                found, _ = self.filter_proposals(props, obj, sizes, num_anchors_per_level)
            for i, b in zip(idx, found):
                boxes[i] = b

        if strong:
            obj_s = _rows(objectness.view(num_images, -1), strong, num_images).reshape(-1, 1)
            deltas_s = _rows(pred_bbox_deltas.view(num_images, -1, 4), strong, num_images).reshape(-1, 4)
            anchors_s = [anchors[i] for i in strong]
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors_s, [targets[i] for i in strong])
            regression_targets = self.box_coder.encode(matched_gt_boxes, anchors_s)
            # The paper's N_reg: the number of anchor locations (feature-map positions) of the strong images.
            n_reg = float(len(strong) * sum(s[1] * s[2] for s in shapes)) if self.n_reg == "paper" else None
            loss_objectness, loss_rpn_box_reg = self.compute_loss(obj_s, deltas_s, labels, regression_targets,
                                                                  n_reg=n_reg)
        else:
            loss_objectness = _zero_like_graph(objectness)
            loss_rpn_box_reg = _zero_like_graph(pred_bbox_deltas)
        return boxes, {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}


class WeakSemiRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` with the weak (MIL) branch.

    In training, strong images' proposals are sampled and labelled as in torchvision. For each weak image its
    ``weak_proposals`` top-scoring RPN proposals are scored without gradient and the mass of interest is
    chosen by :func:`wsbus.mil.select_moi_batch` with the rule ``rule_map[image_label]``
    (:meth:`weak_moi_boxes`). Then the strong RoIs and the weak images' MoI boxes go through ``box_roi_pool``
    → ``box_head`` → ``box_predictor`` in **one** pass with gradient: the strong rows give ``loss_classifier``
    and ``loss_box_reg`` (:func:`wsbus.losses.fast_rcnn_loss`), the MoI rows give ``loss_mil``
    (:func:`wsbus.losses.mil_loss` with ``mil_class_weights``).

    Taught in ``book/05_mil_moi.md``.
    """

    def __init__(self, *args, rule_map: Union[None, str, RuleMap, Mapping] = None, moi_by: str = "prob",
                 mil_class_weights: Optional[Sequence[float]] = None, weak_proposals: Optional[int] = None,
                 mil_reduction: str = "weighted_mean", **kwargs):
        super().__init__(*args, **kwargs)
        if moi_by not in MOI_BY:
            raise ValueError(f"moi_by must be one of {MOI_BY}, got {moi_by!r}")
        self.rule_map = as_rule_map(rule_map)
        self.moi_by = moi_by
        self.mil_class_weights = None if mil_class_weights is None else tuple(float(w) for w in mil_class_weights)
        self.weak_proposals = weak_proposals
        self.mil_reduction = mil_reduction

    def select_moi(self, weak_logits: list[Tensor], image_labels: Tensor) -> Tensor:
        """MoI index of each weak image within its proposals (no gradient; indices only).

        Taught in ``book/05_mil_moi.md``.
        """
        with torch.no_grad():
            # float32 scores: under autocast the logits are bfloat16/float16, whose rounding would create ties
            return select_moi_batch([_full_precision(lg.detach()) for lg in weak_logits],
                                    self.rule_map.rule_ids(image_labels), by=self.moi_by)

    def weak_moi_boxes(self, features: dict[str, Tensor], weak_proposals: list[Tensor], image_labels: Tensor,
                       image_shapes: list[tuple[int, int]], weak: list[int]) -> list[Tensor]:
        """The mass-of-interest box ``[1, 4]`` of each weak image, chosen **without gradient**.

        The top ``weak_proposals`` proposals of each weak image are scored by the box head under
        ``torch.no_grad()``; the MoI is picked from those scores. The caller then runs the head again, with
        gradient, on the chosen box only (together with the strong RoIs). The MIL loss depends on the MoI's
        logits alone, so this gives exactly the loss and gradients of scoring all proposals with gradient,
        without storing activations for, or back-propagating RoIAlign through, the proposals that were not
        chosen (for a 3-image 1 strong + 2 weak tiny batch this is the difference between 1.16x and about 1.0x
        the time of a torchvision strong step per image; on a GPU it is the memory of 2 x 300 RoIs).

        ``weak`` gives the position of each weak image in the mini-batch (its feature map).

        Taught in ``book/05_mil_moi.md``.
        """
        n_images = next(iter(features.values())).shape[0]
        candidates: list[Tensor] = [weak_proposals[0].new_zeros((0, 4))] * n_images
        for i, props in zip(weak, weak_proposals):
            if props.shape[0] == 0:
                raise RuntimeError(f"weak image {i} of the mini-batch has no RPN proposal; cannot pick its mass "
                                   f"of interest")
            candidates[i] = props[: self.weak_proposals] if self.weak_proposals is not None else props
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
        in that dtype (see :func:`_full_precision`); the detections are float32 whatever the autocast state.

        Taught in ``book/03_faster_rcnn.md``.
        """
        return super().postprocess_detections(_full_precision(class_logits), _full_precision(box_regression), proposals,
                                              image_shapes)

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: Optional[list[dict[str, Tensor]]] = None):
        """Eval: torchvision's detections. Training: ``([], {loss_classifier, loss_box_reg, loss_mil})``, see the
        class docstring; losses of a kind of image absent from the batch are graph-connected zeros.

        Taught in ``book/05_mil_moi.md``.
        """
        if not self.training:
            return super().forward(features, proposals, image_shapes, None)
        if targets is None or len(targets) != len(proposals):
            raise ValueError("RoI heads in training mode need one target per image")
        strong = [i for i, t in enumerate(targets) if not is_weak_target(t)]
        weak = [i for i, t in enumerate(targets) if is_weak_target(t)]

        rois = list(proposals)
        labels = regression_targets = None
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

        # One head pass: the strong images' sampled RoIs and each weak image's mass of interest.
        box_features = self.box_roi_pool(features, rois, image_shapes)
        box_features = self.box_head(box_features)
        class_logits, box_regression = self.box_predictor(box_features)

        if weak:
            logits_per_image = class_logits.split([r.shape[0] for r in rois])
            regression_per_image = box_regression.split([r.shape[0] for r in rois])
            strong_logits = torch.cat([logits_per_image[i] for i in strong]) if strong else None
            strong_regression = torch.cat([regression_per_image[i] for i in strong]) if strong else None
        else:
            strong_logits, strong_regression = class_logits, box_regression

        if strong:
            loss_classifier, loss_box_reg = wl.fast_rcnn_loss(strong_logits, strong_regression, labels,
                                                              regression_targets)
        else:
            loss_classifier = _zero_like_graph(class_logits)
            loss_box_reg = _zero_like_graph(box_regression)

        if weak:
            moi_logits = torch.cat([logits_per_image[i] for i in weak])
            # Labels were validated where they entered (WeakSemiFasterRCNN._check_targets): the unchecked form
            # skips mil_loss's range check, a host-device sync.
            loss_mil = wl._mil_loss(moi_logits, image_labels, self.mil_class_weights, reduction=self.mil_reduction)
        else:
            loss_mil = _zero_like_graph(class_logits)
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg, "loss_mil": loss_mil}


class WeakSemiFasterRCNN(GeneralizedRCNN):
    """Faster R-CNN trained jointly on strongly (boxes) and weakly (image label) annotated images.

    Build it with :func:`build_detector`. ``model.backbone``, ``.rpn``, ``.roi_heads`` and ``.transform`` are
    torchvision-compatible modules; ``model.config`` holds the :func:`build_detector` arguments, so that
    ``build_detector(**model.config)`` rebuilds the same architecture (for a checkpoint).

    Forward (torchvision's convention)
    ----------------------------------
    ``model(images, targets) -> dict`` in training mode, with the keys :data:`LOSS_KEYS`; ``images`` is a list
    of float tensors ``[C, H, W]`` in [0, 1] with C = 1 (or 3, averaged to gray); a strong target is
    ``{"boxes": float [K, 4] (x1, y1, x2, y2), "labels": int64 [K] in 1..num_classes-1}`` (K = 0: normal image),
    a weak target ``{"image_label": int or 0-d tensor}``. ``model(images) -> list[dict(boxes, labels,
    scores)]`` in eval mode, in input-image coordinates.

    Taught in ``book/03_faster_rcnn.md`` and ``book/06_joint_training.md``.
    """

    def __init__(self, backbone: nn.Module, rpn: WeakSemiRPN, roi_heads: WeakSemiRoIHeads,
                 transform: GeneralizedRCNNTransform, config: Optional[dict] = None):
        super().__init__(backbone, rpn, roi_heads, transform)
        self.config = dict(config or {})
        self.channels_last = False

    def set_channels_last(self, enabled: bool = True) -> "WeakSemiFasterRCNN":
        """Keep the backbone's weights, and feed it the batched images, in ``torch.channels_last`` layout
        (NHWC), which oneDNN on CPU and cuDNN's tensor-core kernels prefer; ``False`` goes back to NCHW.

        The numbers computed are the same up to floating-point summation order; the state dict is unchanged.
        Returns the model. Taught in ``book/03_faster_rcnn.md``.
        """
        fmt = torch.channels_last if enabled else torch.contiguous_format
        self.backbone.to(memory_format=fmt)
        self.rpn.head.to(memory_format=fmt)
        self.channels_last = bool(enabled)
        return self

    def _backbone(self, tensors: Tensor) -> dict[str, Tensor]:
        if self.channels_last:
            tensors = tensors.contiguous(memory_format=torch.channels_last)
        features = self.backbone(tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        return features

    @property
    def num_classes(self) -> int:
        """Number of classes including background / normal (3). Taught in ``book/03_faster_rcnn.md``."""
        return self.roi_heads.box_predictor.cls_score.out_features

    # ------------------------------------------------------------------ input checks
    def _check_images(self, images) -> list[Tensor]:
        if isinstance(images, Tensor):
            if images.dim() != 4:
                raise ValueError(f"images must be a list of [C, H, W] tensors or one [N, C, H, W] tensor, got a "
                                 f"tensor of shape {tuple(images.shape)}")
            images = list(images)
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ValueError(f"images must be a non-empty list of [C, H, W] tensors, got {type(images).__name__}")
        for i, img in enumerate(images):
            if not isinstance(img, Tensor):
                raise TypeError(f"image {i}: expected a torch.Tensor, got {type(img).__name__}")
            if img.dim() != 3 or img.shape[0] not in (1, 3):
                raise ValueError(f"image {i}: expected a [C, H, W] tensor with C = 1 (grayscale) or 3, got shape "
                                 f"{tuple(img.shape)}")
            if img.shape[1] < 1 or img.shape[2] < 1:
                raise ValueError(f"image {i}: empty image of shape {tuple(img.shape)}")
            if not img.is_floating_point():
                raise TypeError(f"image {i}: expected a float tensor in [0, 1], got {img.dtype} (convert with "
                                f"torchvision.transforms.v2.functional.to_dtype(img, torch.float32, scale=True))")
        return list(images)

    def _check_targets(self, targets, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Validate the targets and move them to their image's device.

        Types, shapes and dtypes are checked from metadata. The value checks (labels in range, finite
        non-degenerate boxes) of all targets are reduced on the device to ONE flag, read once per forward (the
        only host-device synchronisation wsbus adds to a training forward; none when every value is a Python
        number or lives on the CPU). Only when that flag is set are the targets re-examined one by one, to say
        which target and which box is wrong.
        """
        if targets is None:
            raise ValueError("training mode needs targets (a list with one dict per image); call model.eval() "
                             "for detections")
        if not isinstance(targets, (list, tuple)) or len(targets) != len(images):
            raise ValueError(f"expected one target per image ({len(images)}), got "
                             f"{len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__}")
        k = self.num_classes
        checked = []
        flags: list[Tensor] = []
        for i, (t, img) in enumerate(zip(targets, images)):
            where = f"target {i}"
            if not isinstance(t, Mapping):
                raise TypeError(f"{where}: expected a dict, got {type(t).__name__}")
            device = img.device
            if is_weak_target(t):
                if "image_label" not in t:
                    raise ValueError(
                        f"{where} has keys {sorted(t)}: a strong target needs 'boxes' and 'labels', a weak "
                        f"target needs 'image_label'")
                raw = t["image_label"]
                if isinstance(raw, Tensor):  # checked on its device, with the other targets (one sync)
                    if raw.numel() != 1 or raw.is_floating_point() or raw.dtype == torch.bool:
                        raise ValueError(f"{where}: image_label must be one integer, got {raw!r}")
                    label = raw.reshape(()).to(device=device, dtype=torch.int64, non_blocking=True)
                    flags.append(((label < 0) | (label >= k)).reshape(1))
                else:  # a Python / NumPy integer: checked on the host
                    try:
                        if isinstance(raw, bool):
                            raise TypeError
                        value = operator.index(raw)
                    except TypeError:
                        raise ValueError(f"{where}: image_label must be one integer, got {raw!r}") from None
                    if not 0 <= value < k:
                        raise ValueError(f"{where}: image_label {value} is out of range 0..{k - 1}")
                    label = torch.full((), value, dtype=torch.int64, device=device)  # a fill, not a copy
                checked.append({"image_label": label})
                continue
            if "labels" not in t:
                raise ValueError(f"{where} has 'boxes' but no 'labels' (keys: {sorted(t)})")
            boxes, labels = t["boxes"], t["labels"]
            if not isinstance(boxes, Tensor) or not isinstance(labels, Tensor):
                raise TypeError(f"{where}: boxes and labels must be tensors, got {type(boxes).__name__} and "
                                f"{type(labels).__name__}")
            if boxes.dim() != 2 or boxes.shape[1] != 4:
                raise ValueError(f"{where}: boxes must be [K, 4], got shape {tuple(boxes.shape)}")
            if not boxes.is_floating_point():
                raise TypeError(f"{where}: boxes must be a float tensor, got {boxes.dtype}")
            if labels.dtype != torch.int64 or labels.shape != (boxes.shape[0],):
                raise ValueError(f"{where}: labels must be int64 [{boxes.shape[0]}], got {labels.dtype} "
                                 f"{tuple(labels.shape)}")
            # non_blocking: a blocking host-to-device copy would wait for the GPU queue to drain
            boxes, labels = boxes.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if boxes.shape[0]:
                flags.append((self._bad_labels(labels).any() | self._bad_boxes(boxes).any()).reshape(1))
            checked.append({"boxes": boxes, "labels": labels})
        if flags and bool(torch.cat([f.to(flags[0].device) for f in flags]).any()):
            self._raise_bad_target(checked)
        return checked

    def _bad_labels(self, labels: Tensor) -> Tensor:
        return (labels < 1) | (labels >= self.num_classes)

    @staticmethod
    def _bad_boxes(boxes: Tensor) -> Tensor:
        return ~torch.isfinite(boxes).all(dim=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])

    def _raise_bad_target(self, checked: list[dict[str, Tensor]]) -> None:
        """The slow path of :meth:`_check_targets`: find the first bad target and say what is wrong."""
        k = self.num_classes
        for i, t in enumerate(checked):
            where = f"target {i}"
            if "image_label" in t and "boxes" not in t:
                value = int(t["image_label"])
                if not 0 <= value < k:
                    raise ValueError(f"{where}: image_label {value} is out of range 0..{k - 1}")
                continue
            boxes, labels = t["boxes"], t["labels"]
            if bool(self._bad_labels(labels).any()):
                raise ValueError(f"{where}: box labels must lie in 1..{k - 1} (0 is background), got "
                                 f"{sorted(set(labels.tolist()))}")
            bad = self._bad_boxes(boxes)
            if bool(bad.any()):
                j = int(bad.nonzero()[0, 0])
                raise ValueError(f"{where}: box {j} {boxes[j].tolist()} is degenerate (need finite "
                                 f"x1 < x2 and y1 < y2)")
        raise AssertionError("a target failed validation but no bad target was found")  # pragma: no cover

    # ------------------------------------------------------------------ forward
    def forward(self, images, targets=None):
        """Losses (training) or detections (eval); see the class docstring.

        Taught in ``book/06_joint_training.md``.
        """
        images = self._check_images(images)
        if self.training:
            targets = self._check_targets(targets, images)
        original_image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]

        if self.training:
            # The transform resizes boxes; weak images have none, so they pass an empty box list through it.
            empty = images[0].new_zeros((0, 4))
            image_list, resized = self.transform(images, [{"boxes": empty} if is_weak_target(t) else t
                                                          for t in targets])
            targets = [t if is_weak_target(t) else r for t, r in zip(targets, resized)]
        else:
            image_list, _ = self.transform(images, None)

        features = self._backbone(image_list.tensors)
        proposals, proposal_losses = self.rpn(image_list, features, targets if self.training else None)
        detections, detector_losses = self.roi_heads(features, proposals, image_list.image_sizes,
                                                     targets if self.training else None)
        if self.training:
            losses = {**proposal_losses, **detector_losses}
            return {k: losses[k] for k in LOSS_KEYS}
        return self.transform.postprocess(detections, image_list.image_sizes, original_image_sizes)

    # ------------------------------------------------------------------ inspection helpers
    def proposal_logits(self, images, grad: bool = False) -> list[tuple[Tensor, Tensor]]:
        """RPN proposals and their Fast R-CNN class logits, per image, in input-image coordinates.

        Runs in eval mode (test-time proposal counts; the module's mode is restored afterwards) and without
        gradient unless ``grad=True``.

        Returns
        -------
        list of (proposals [R, 4], logits [R, num_classes]) pairs, one per image.

        Taught in ``book/05_mil_moi.md``.
        """
        images = self._check_images(images)
        original_image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        was_training = self.training
        self.eval()
        try:
            with torch.set_grad_enabled(grad):
                image_list, _ = self.transform(images, None)
                features = self._backbone(image_list.tensors)
                proposals, _ = self.rpn(image_list, features, None)
                heads = self.roi_heads
                logits, _ = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, proposals,
                                                                                  image_list.image_sizes)))
                out = []
                for props, lg, size, orig in zip(proposals, logits.split([len(p) for p in proposals]),
                                                 image_list.image_sizes, original_image_sizes):
                    out.append((resize_boxes(props, size, orig), lg))
        finally:
            self.train(was_training)
        return out

    def mass_of_interest(self, images, image_labels=None, rule: Optional[str] = None,
                         by: Optional[str] = None) -> list[dict[str, Any]]:
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

        Returns
        -------
        list of dict with ``box`` (Tensor [4], input coordinates), ``index`` (int, into the proposals of
        :meth:`proposal_logits`), ``probs`` (Tensor [num_classes], softmax of the MoI's logits) and ``rule``.

        Taught in ``book/05_mil_moi.md``.
        """
        pairs = self.proposal_logits(images)
        if rule is not None:
            rules = [rule] * len(pairs)
        elif image_labels is not None:
            labels = [int(x) for x in image_labels]
            if len(labels) != len(pairs):
                raise ValueError(f"{len(labels)} image labels for {len(pairs)} images")
            rules = [self.roi_heads.rule_map[x] for x in labels]
        else:
            raise ValueError("mass_of_interest needs image_labels (rule per label) or one rule")
        idx = select_moi_batch([lg for _, lg in pairs], rules, by=by or self.roi_heads.moi_by).tolist()
        return [{"box": p[i], "index": i, "probs": torch.softmax(lg[i], dim=0), "rule": r}
                for (p, lg), i, r in zip(pairs, idx, rules)]

    def as_torchvision(self, share_modules: bool = False) -> FasterRCNN:
        """torchvision's own ``FasterRCNN`` built from this model's modules and settings.

        Every submodule with weights or settings (backbone, RPN head, RoI pooling, box head and predictor,
        transform) is deep-copied (or shared with ``share_modules=True``) and the anchor generator is torchvision's
        own uncached ``AnchorGenerator`` with the same sizes and ratios, so both models compute the same thing on
        strong images: the reference for the equivalence tests and ``benchmarks/step_time.py``.

        Taught in ``book/03_faster_rcnn.md``.
        """
        dup = (lambda m: m) if share_modules else copy.deepcopy
        rpn, heads, tr = self.rpn, self.roi_heads, self.transform
        model = FasterRCNN(
            dup(self.backbone), num_classes=None,
            min_size=tr.min_size, max_size=tr.max_size, image_mean=tr.image_mean, image_std=tr.image_std,
            # torchvision's own (uncached) anchor generator with the same sizes and ratios
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


def _as_counts(value, name: str) -> dict[str, int]:
    if isinstance(value, Mapping):
        if set(value) != {"training", "testing"}:
            raise ValueError(f"{name} must have the keys 'training' and 'testing', got {sorted(value)}")
        return {"training": int(value["training"]), "testing": int(value["testing"])}
    return {"training": int(value), "testing": int(value)}


def build_detector(
    backbone: str = "vgg16",
    num_classes: int = 3,
    pretrained: bool = False,
    min_size: Optional[int] = None,
    max_size: Optional[int] = None,
    channels_last: bool = False,
    **options: Any,
) -> WeakSemiFasterRCNN:
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
        Resizing of torchvision's transform. ``None`` takes the backbone's preset: the reference 600 / 1000
        for vgg16 and resnets, 128 / 256 for tiny (the phantom's size; resizing 128 px images to 600 px would
        only cost time).
    channels_last : bool
        Run the backbone in the ``torch.channels_last`` memory format (:meth:`WeakSemiFasterRCNN.set_channels_last`).
        A speed option, not part of the architecture: it is not recorded in ``config`` and checkpoints load
        either way. Measured in ``docs/performance.md`` (faster convolutions on CPU and on tensor-core GPUs).
    **options
        Overrides of :data:`PRESETS` and the weak branch:

        * anchors and RoIs: ``anchor_sizes``, ``anchor_ratios``, ``roi_output_size``, ``sampling_ratio``,
          ``representation_size`` (fc6/fc7 width; 512 as in the reference for vgg16);
        * RPN: ``rpn_pre_nms_top_n`` / ``rpn_post_nms_top_n`` (int or ``{"training": , "testing": }``),
          ``rpn_nms_thresh``, ``rpn_fg_iou_thresh``, ``rpn_bg_iou_thresh``, ``rpn_batch_size_per_image``,
          ``rpn_positive_fraction``, ``rpn_score_thresh``, ``rpn_n_reg`` (``"torchvision"`` | ``"paper"``),
          ``rpn_lambda`` (default 1, or 10 with ``rpn_n_reg="paper"``);
        * box head: ``box_fg_iou_thresh``, ``box_bg_iou_thresh``, ``box_batch_size_per_image``,
          ``box_positive_fraction``, ``bbox_reg_weights``, ``box_score_thresh``, ``box_nms_thresh`` (0.3, the
          reference), ``box_detections_per_img``;
        * weak branch: ``moi_rules`` (a :class:`wsbus.mil.RuleMap`, preset name or label→rule mapping; default
          ``"paper"``), ``moi_by`` (``"prob"`` | ``"logit"``), ``mil_class_weights`` (None = plain mean,
          ``"reference"`` = :data:`wsbus.losses.REFERENCE_MIL_WEIGHTS`, or 3 floats), ``mil_reduction``,
          ``weak_proposals`` (top RPN proposals of a weak image scored by the box head; default the test-time
          post-NMS count, 300 for vgg16 — the reference scores all 2000 training proposals, which costs about
          seven times more head compute for the same argmax in practice), ``weak_pre_nms_top_n`` (default:
          the test-time pre-NMS count);
        * backbone: ``frozen_stages``, ``norm`` (ResNets); grayscale ``image_mean`` / ``image_std``.

    Returns
    -------
    WeakSemiFasterRCNN
        With ``model.config`` = every resolved argument (plain data: JSON- and ``weights_only``-safe), so
        ``build_detector(**model.config)`` rebuilds it. The architecture does not depend on ``pretrained`` once
        the config is resolved (``norm``, ``frozen_stages`` and the grayscale statistics are recorded), so
        ``build_detector(**{**config, "pretrained": False})`` rebuilds a pretrained model offline for
        ``load_state_dict``.

    Taught in ``book/03_faster_rcnn.md``.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
    preset = PRESETS[backbone]
    known = set(preset) | {
        "rpn_n_reg", "rpn_lambda", "moi_rules", "moi_by", "mil_class_weights", "mil_reduction", "weak_proposals",
        "weak_pre_nms_top_n", "frozen_stages", "norm", "image_mean", "image_std",
    }
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"build_detector got unknown option(s) {unknown}; known: {sorted(known)}")
    o = {**preset, **options}
    o["min_size"] = int(min_size if min_size is not None else preset["min_size"])
    o["max_size"] = int(max_size if max_size is not None else preset["max_size"])
    pre = _as_counts(o["rpn_pre_nms_top_n"], "rpn_pre_nms_top_n")
    post = _as_counts(o["rpn_post_nms_top_n"], "rpn_post_nms_top_n")
    mean, std = _GRAY_STATS[bool(pretrained)]
    for key in ("image_mean", "image_std"):
        if key in o and len(tuple(o[key])) != 1:
            raise ValueError(f"{key} must hold one value (the backbones take grayscale images), got {o[key]}")
    weights = o.get("mil_class_weights")
    if isinstance(weights, str):
        if weights != "reference":
            raise ValueError(f"mil_class_weights must be None, 'reference' or 3 floats, got {weights!r}")
        weights = wl.REFERENCE_MIL_WEIGHTS
    if weights is not None:
        weights = tuple(float(w) for w in weights)
        if len(weights) != num_classes or any(w < 0 or not math.isfinite(w) for w in weights):
            raise ValueError(f"mil_class_weights must be {num_classes} finite non-negative floats, got {weights}")
    rule_map = as_rule_map(o.get("moi_rules"))
    norm = o.get("norm")
    frozen = o.get("frozen_stages")
    if frozen is None:
        frozen = 2 if pretrained else 0
    if backbone.startswith("resnet") and norm is None:
        norm = "frozen_bn" if pretrained else "bn"
    config = dict(
        backbone=backbone, num_classes=int(num_classes), pretrained=bool(pretrained),
        min_size=o["min_size"], max_size=o["max_size"],
        **{k: o[k] for k in preset if k not in ("min_size", "max_size")},
        rpn_n_reg=o.get("rpn_n_reg", "torchvision"), rpn_lambda=o.get("rpn_lambda"),
        moi_rules=rule_map.as_dict(), moi_by=o.get("moi_by", "prob"), mil_class_weights=weights,
        mil_reduction=o.get("mil_reduction", "weighted_mean"),
        weak_proposals=int(o.get("weak_proposals") or post["testing"]),
        weak_pre_nms_top_n=int(o.get("weak_pre_nms_top_n") or pre["testing"]),
        frozen_stages=int(frozen), norm=norm,
        image_mean=tuple(float(x) for x in o.get("image_mean", mean)),
        image_std=tuple(float(x) for x in o.get("image_std", std)),
    )
    config["rpn_pre_nms_top_n"], config["rpn_post_nms_top_n"] = pre, post
    config["anchor_sizes"] = tuple(int(s) for s in config["anchor_sizes"])
    config["anchor_ratios"] = tuple(float(r) for r in config["anchor_ratios"])
    c = config

    body = build_backbone(backbone, pretrained=pretrained, frozen_stages=c["frozen_stages"], norm=c["norm"])
    anchor_generator = CachedAnchorGenerator(sizes=(c["anchor_sizes"],), aspect_ratios=(c["anchor_ratios"],))
    num_anchors = anchor_generator.num_anchors_per_location()[0]
    rpn = WeakSemiRPN(
        anchor_generator, RPNHead(body.out_channels, num_anchors),
        # RPN training
        c["rpn_fg_iou_thresh"], c["rpn_bg_iou_thresh"], c["rpn_batch_size_per_image"], c["rpn_positive_fraction"],
        # RPN proposals
        pre, post, c["rpn_nms_thresh"], score_thresh=c["rpn_score_thresh"],
        # the paper's loss normalisation and the weak images' proposals
        n_reg=c["rpn_n_reg"], lam=c["rpn_lambda"], weak_pre_nms_top_n=c["weak_pre_nms_top_n"],
        weak_post_nms_top_n=c["weak_proposals"],
    )
    roi_size = c["roi_output_size"]
    roi_heads = WeakSemiRoIHeads(
        MultiScaleRoIAlign(featmap_names=["0"], output_size=roi_size, sampling_ratio=c["sampling_ratio"]),
        TwoMLPHead(body.out_channels * roi_size * roi_size, c["representation_size"]),
        FastRCNNPredictor(c["representation_size"], c["num_classes"]),
        # Fast R-CNN training
        c["box_fg_iou_thresh"], c["box_bg_iou_thresh"], c["box_batch_size_per_image"], c["box_positive_fraction"],
        c["bbox_reg_weights"],
        # Fast R-CNN inference
        c["box_score_thresh"], c["box_nms_thresh"], c["box_detections_per_img"],
        # weak branch
        rule_map=rule_map, moi_by=c["moi_by"], mil_class_weights=weights, weak_proposals=c["weak_proposals"],
        mil_reduction=c["mil_reduction"],
    )
    transform = GrayscaleRCNNTransform(c["min_size"], c["max_size"], list(c["image_mean"]), list(c["image_std"]))
    model = WeakSemiFasterRCNN(body, rpn, roi_heads, transform, config=config)
    if channels_last:
        model.set_channels_last(True)
    return model
