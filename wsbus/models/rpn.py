"""The region proposal network of the joint detector: proposals for every image, a loss from the strong ones.

:class:`WeakSemiRPN` is torchvision's ``RegionProposalNetwork`` with three changes: weak images get proposals (with
their own, test-time-like counts) but no loss; the loss goes through :func:`wsbus.losses.rpn_loss`, with the
paper's or torchvision's normalisation; and anchors centred on the fixed canvas's padding, outside the image, are
neither proposals nor training samples (:func:`anchors_inside`; the original Faster R-CNN likewise ignores
anchors that cross the image border in training). :class:`CachedAnchorGenerator` computes the anchors of a feature-map
geometry once.
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers

from ..losses import rpn_loss
from ._utils import full_precision, is_weak_target, take_rows, zero_like_graph

__all__ = ["CachedAnchorGenerator", "WeakSemiRPN", "anchors_inside"]


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


def anchors_inside(anchors: list[Tensor], image_sizes: list[tuple[int, int]]) -> Tensor:
    """``[N, A]`` bool: which anchors of each image have their centre inside the image (``(h, w)`` after resizing),
    not on the padding of the canvas (:mod:`wsbus.models.transform`)."""
    out = []
    for a, (h, w) in zip(anchors, image_sizes):
        cx = (a[:, 0] + a[:, 2]) * 0.5
        cy = (a[:, 1] + a[:, 3]) * 0.5
        out.append((cx < w) & (cy < h))
    return torch.stack(out)


class WeakSemiRPN(RegionProposalNetwork):
    """torchvision's ``RegionProposalNetwork`` that proposes for every image but trains on strong images only.

    Extra arguments: ``n_reg`` (``"torchvision"``: :math:`N_{reg}` = sampled anchors, or ``"paper"``: number of
    anchor locations, as in the paper's eq. 1), ``lam`` (:math:`\\lambda`; default 1 for torchvision, 10 for the
    paper), ``beta`` (smooth-L1), and the pre/post-NMS counts used for weak images (the test-time settings by
    default: weak images are used like test images, only their top proposals are ever scored).

    Targets are a list with one dict per image; weak images' dicts have no ``"boxes"``.

    Taught in ``book/03_faster_rcnn.md``.
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
        their proposals. """
        return self.weak_pre_nms_top_n if self._weak_phase else super().pre_nms_top_n()

    def post_nms_top_n(self) -> int:
        """Proposals kept after NMS (see :meth:`pre_nms_top_n`). """
        return self.weak_post_nms_top_n if self._weak_phase else super().post_nms_top_n()

    @contextmanager
    def weak_counts(self, enabled: bool = True) -> Iterator[None]:
        """Within the block, filter proposals with the weak images' pre/post-NMS counts (when ``enabled``)."""
        before = self._weak_phase
        self._weak_phase = bool(enabled) or before
        try:
            yield
        finally:
            self._weak_phase = before

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor], n_reg: Optional[float] = None) -> tuple[Tensor, Tensor]:
        """Sample anchors with torchvision's balanced sampler, then :func:`wsbus.losses.rpn_loss`.
        """
        pos_masks, neg_masks = self.fg_bg_sampler(labels)
        pos = torch.cat(pos_masks).bool()
        neg = torch.cat(neg_masks).bool()
        sampled_labels = torch.where(pos, 1, torch.where(neg, 0, -1))
        return rpn_loss(objectness.flatten(), pred_bbox_deltas, sampled_labels,
                           torch.cat(regression_targets, dim=0), lam=self.lam, beta=self.beta, n_reg=n_reg)

    def forward(self, images: ImageList, features: dict[str, Tensor],
                targets: Optional[list[dict[str, Tensor]]] = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals for every image (strong: training counts, weak: ``weak_*`` counts, eval: testing counts)
        and, in training, ``loss_objectness`` / ``loss_rpn_box_reg`` from the strong images only (graph-connected
        zeros when there is none).
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
        proposals = self.box_coder.decode(full_precision(pred_bbox_deltas.detach()), anchors).view(num_images, -1, 4)
        scores = full_precision(objectness.detach())
        # Anchors centred on the canvas's padding, outside the image, propose nothing (they are ranked last and
        # given empty boxes, which filter_proposals removes) and are ignored by the loss.
        # (Always masked: testing whether any anchor is outside would cost a host sync per step.)
        inside = anchors_inside(anchors, images.image_sizes)
        scores = scores.masked_fill(~inside.reshape(-1, 1), float("-inf"))
        proposals = proposals.masked_fill(~inside.unsqueeze(-1), 0.0)

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
            props = take_rows(proposals, idx)
            obj = take_rows(scores.view(num_images, -1), idx).reshape(-1, 1)
            sizes = [images.image_sizes[i] for i in idx]
            if phase:
                with self.weak_counts():
                    found, _ = self.filter_proposals(props, obj, sizes, num_anchors_per_level)
            else:
                found, _ = self.filter_proposals(props, obj, sizes, num_anchors_per_level)
            for i, b in zip(idx, found):
                boxes[i] = b

        if strong:
            obj_s = take_rows(objectness.view(num_images, -1), strong).reshape(-1, 1)
            deltas_s = take_rows(pred_bbox_deltas.view(num_images, -1, 4), strong).reshape(-1, 4)
            anchors_s = [anchors[i] for i in strong]
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors_s, [targets[i] for i in strong])
            labels = [torch.where(inside[i], lab, torch.full_like(lab, -1.0)) for i, lab in zip(strong, labels)]
            regression_targets = self.box_coder.encode(matched_gt_boxes, anchors_s)
            # The paper's N_reg: the number of anchor locations (feature-map positions) of the strong images.
            n_reg = float(len(strong) * sum(s[1] * s[2] for s in shapes)) if self.n_reg == "paper" else None
            loss_objectness, loss_rpn_box_reg = self.compute_loss(obj_s, deltas_s, labels, regression_targets,
                                                                  n_reg=n_reg)
        else:
            loss_objectness = zero_like_graph(objectness)
            loss_rpn_box_reg = zero_like_graph(pred_bbox_deltas)
        return boxes, {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}
