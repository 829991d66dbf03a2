"""The detector's configuration: :class:`DetectorConfig`, one frozen dataclass, and its per-backbone presets.

:func:`wsbus.models.build_detector` turns keyword options into a :class:`DetectorConfig` (unknown options are a
``TypeError`` from the dataclass itself, not from a hand-written list) and builds the model from it; the model
keeps ``config.as_dict()`` as ``model.config``, the plain data that checkpoints store and
:meth:`DetectorConfig.from_dict` reads back.

Reference values, from the authors' TF code (github syshin1014/wssdl_bus):

* ``code/lib/fast_rcnn/config.py``: TRAIN.SCALES=(600,), MAX_SIZE=1000; TRAIN.RPN_PRE/POST_NMS_TOP_N=12000/2000,
  TEST.RPN_PRE/POST_NMS_TOP_N=6000/300, RPN_NMS_THRESH=0.7, TEST.NMS=0.3, RPN_POSITIVE/NEGATIVE_OVERLAP=0.7/0.3,
  RPN_BATCHSIZE=256, RPN_FG_FRACTION=0.5, TRAIN.BATCH_SIZE=128 RoIs, FG_FRACTION=0.25, FG_THRESH=0.5,
  BG_THRESH_HI=0.5 / LO=0.0; PIXEL_MEANS=68.274, PIXEL_STDS=52.802 (BUS).
* ``code/lib/networks/VGGnet_train_bus.py``: conv1-2 trainable=False, _feat_stride=16, anchor_scales=[8,16,32] on a
  16-px base anchor = sizes 128, 256, 512 with ratios 0.5, 1, 2; roi_pool 7x7 at 1/16; fc6/fc7 of 512.

Differences kept from torchvision: RoIAlign (sampling_ratio 2) instead of RoIPool, no dropout in the fc head,
box-regression weights (10, 10, 5, 5) with smooth-L1 (the reference regresses unnormalised targets with L1), and
proposals smaller than 1e-3 px dropped (the reference drops those under 16 px).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple, Union

from ..losses import REFERENCE_MIL_WEIGHTS
from ..mil import MOI_BY, as_rule_map
from .backbones import BACKBONES

__all__ = ["DetectorConfig", "PRESETS", "GRAY_STATS", "RPN_N_REG"]

#: Grayscale normalisation (mean, std) by ``pretrained``: the reference's BUS pixel statistics (68.274 / 255,
#: 52.802 / 255) from scratch; the channel means of ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) with
#: pretrained weights.
GRAY_STATS = {False: ((68.274 / 255,), (52.802 / 255,)), True: ((0.449,), (0.226,))}
#: Normalisations of the RPN's regression loss: ``"torchvision"`` (N_reg = sampled anchors) or ``"paper"``
#: (N_reg = anchor locations, eq. 1 of Faster R-CNN).
RPN_N_REG = ("torchvision", "paper")
MIL_REDUCTIONS = ("weighted_mean", "batch_mean")

Counts = Mapping[str, int]


def _counts(value: Union[int, Counts], name: str) -> dict:
    if isinstance(value, Mapping):
        if set(value) != {"training", "testing"}:
            raise ValueError(f"{name} must have the keys 'training' and 'testing', got {sorted(value)}")
        return {"training": int(value["training"]), "testing": int(value["testing"])}
    return {"training": int(value), "testing": int(value)}


@dataclass(frozen=True)
class DetectorConfig:
    """Every setting of :class:`wsbus.models.WeakSemiFasterRCNN`, grouped by stage as torchvision groups them.

    Build one with :meth:`preset` (a backbone's defaults plus overrides) or :meth:`from_dict` (a checkpoint's
    ``model.config``); ``None`` fields are resolved from the others on construction (``weak_proposals`` and
    ``weak_pre_nms_top_n`` from the test-time RPN counts, ``frozen_stages``, ``norm`` and the grayscale statistics
    from ``pretrained``), so a config is always complete and ``DetectorConfig(**config.as_dict()) == config``.

    Attributes (beyond torchvision's own ``FasterRCNN`` arguments of the same names)
    ------------------------------------------------------------------------------
    backbone : one of :data:`wsbus.models.BACKBONES`.
    anchor_sizes, anchor_ratios : one feature map, so one tuple each.
    representation_size : fc6/fc7 width (512 in the reference for VGG16).
    rpn_n_reg, rpn_lam : the RPN loss normalisation (:data:`RPN_N_REG`) and λ (default 1, or 10 with
        ``"paper"``), see :func:`wsbus.losses.rpn_loss`.
    moi_rules : the MoI rule per image label (:func:`wsbus.mil.as_rule_map` spec; stored as ``{0: rule, 1: rule,
        2: rule}``); ``moi_by``: ``"prob"`` or ``"logit"`` (the reference code).
    mil_class_weights : None (plain mean), ``"reference"`` (:data:`wsbus.losses.REFERENCE_MIL_WEIGHTS`) or one
        non-negative weight per class; ``mil_reduction``: ``"weighted_mean"`` (the paper) or ``"batch_mean"`` (what
        the reference TF code computes), see :func:`wsbus.losses.mil_loss`.
    weak_proposals, weak_pre_nms_top_n : the RPN counts for weak images: the mass of interest is picked among the
        ``weak_proposals`` most object-like proposals (default: the test-time post-NMS count; ``"training"``: the
        training-time pre/post-NMS counts, as the paper and its reference code, which scores
        all 2000 training proposals, about seven times more head compute for the same argmax in practice).
    width : channel multiplier of the tiny backbone (1: 16/32/64/64 channels).
    frozen_stages, norm : backbone stages not trained (default 2 with pretrained weights, as the reference freezes
        conv1-2) and the ResNets' normalisation (``frozen_bn`` pretrained, ``bn`` from scratch).
    image_mean, image_std : grayscale normalisation (one value each), default :data:`GRAY_STATS`.

    Taught in ``book/03_faster_rcnn.md``.
    """

    backbone: str = "vgg16"
    num_classes: int = 3
    pretrained: bool = False
    # transform
    min_size: int = 600
    max_size: int = 1000
    image_mean: Optional[Tuple[float, ...]] = None
    image_std: Optional[Tuple[float, ...]] = None
    # backbone
    frozen_stages: Optional[int] = None
    norm: Optional[str] = None
    width: float = 1.0
    # anchors and RPN
    anchor_sizes: Tuple[int, ...] = (128, 256, 512)
    anchor_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n: Counts = field(default_factory=lambda: {"training": 12000, "testing": 6000})
    rpn_post_nms_top_n: Counts = field(default_factory=lambda: {"training": 2000, "testing": 300})
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_score_thresh: float = 0.0
    rpn_n_reg: str = "torchvision"
    rpn_lam: Optional[float] = None
    # Fast R-CNN head: training
    representation_size: int = 512
    roi_output_size: int = 7
    sampling_ratio: int = 2
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 128
    box_positive_fraction: float = 0.25
    bbox_reg_weights: Optional[Tuple[float, ...]] = None
    # Fast R-CNN head: inference
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.3
    box_detections_per_img: int = 100
    # weak branch
    moi_rules: Any = None
    moi_by: str = "prob"
    mil_class_weights: Any = None
    mil_reduction: str = "weighted_mean"
    weak_proposals: Optional[int] = None
    weak_pre_nms_top_n: Optional[int] = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {BACKBONES}")
        if int(self.num_classes) < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got {self.num_classes}")
        for name in ("num_classes", "min_size", "max_size", "rpn_batch_size_per_image", "representation_size",
                     "roi_output_size", "sampling_ratio", "box_batch_size_per_image", "box_detections_per_img"):
            put(name, int(getattr(self, name)))
        put("pretrained", bool(self.pretrained))
        pre = _counts(self.rpn_pre_nms_top_n, "rpn_pre_nms_top_n")
        post = _counts(self.rpn_post_nms_top_n, "rpn_post_nms_top_n")
        put("rpn_pre_nms_top_n", pre)
        put("rpn_post_nms_top_n", post)
        phase = "training" if self.weak_proposals == "training" else "testing"
        put("weak_proposals", int(post[phase] if self.weak_proposals in (None, "training") else self.weak_proposals))
        put("weak_pre_nms_top_n", int(self.weak_pre_nms_top_n or pre[phase]))
        put("anchor_sizes", tuple(int(s) for s in self.anchor_sizes))
        put("anchor_ratios", tuple(float(r) for r in self.anchor_ratios))
        if self.bbox_reg_weights is not None:
            put("bbox_reg_weights", tuple(float(w) for w in self.bbox_reg_weights))
        if self.rpn_n_reg not in RPN_N_REG:
            raise ValueError(f"rpn_n_reg must be one of {RPN_N_REG}, got {self.rpn_n_reg!r}")
        if self.moi_by not in MOI_BY:
            raise ValueError(f"moi_by must be one of {MOI_BY}, got {self.moi_by!r}")
        if self.mil_reduction not in MIL_REDUCTIONS:
            raise ValueError(f"mil_reduction must be one of {MIL_REDUCTIONS}, got {self.mil_reduction!r}")
        put("moi_rules", as_rule_map(self.moi_rules).as_dict())
        put("mil_class_weights", self._weights(self.mil_class_weights))
        mean, std = GRAY_STATS[self.pretrained]
        for name, default in (("image_mean", mean), ("image_std", std)):
            value = tuple(float(x) for x in (getattr(self, name) if getattr(self, name) is not None else default))
            if len(value) != 1:
                raise ValueError(f"{name} must hold one value (the backbones take grayscale images), got {value}")
            put(name, value)
        put("frozen_stages", int(self.frozen_stages if self.frozen_stages is not None else
                                 (2 if self.pretrained else 0)))
        if self.norm is None and self.backbone.startswith("resnet"):
            put("norm", "frozen_bn" if self.pretrained else "bn")

    def _weights(self, weights: Any) -> Optional[Tuple[float, ...]]:
        if isinstance(weights, str):
            if weights != "reference":
                raise ValueError(f"mil_class_weights must be None, 'reference' or {self.num_classes} floats, "
                                 f"got {weights!r}")
            weights = REFERENCE_MIL_WEIGHTS
        if weights is None:
            return None
        weights = tuple(float(w) for w in weights)
        if len(weights) != self.num_classes or any(w < 0 or not math.isfinite(w) for w in weights):
            raise ValueError(f"mil_class_weights must be {self.num_classes} finite non-negative floats, got {weights}")
        return weights

    # ------------------------------------------------------------------ constructors
    @classmethod
    def preset(cls, backbone: str = "vgg16", **overrides: Any) -> "DetectorConfig":
        """The preset of ``backbone`` (:data:`PRESETS`) with ``overrides`` applied; an unknown option is a
        ``TypeError`` naming it. ``None`` for ``min_size`` / ``max_size`` keeps the preset's.
        """
        if backbone not in _PRESET_FIELDS:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
        known = {f.name for f in dataclasses.fields(cls)} - {"backbone"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"build_detector got unknown option(s) {unknown}; known: {sorted(known)}")
        given = {k: v for k, v in overrides.items() if not (k in ("min_size", "max_size") and v is None)}
        return cls(backbone=backbone, **{**_PRESET_FIELDS[backbone], **given})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DetectorConfig":
        """The config stored as ``model.config`` (or in a checkpoint's ``config["model"]``). """
        data = dict(data)
        if "rpn_lambda" in data and "rpn_lam" not in data:  # the name before wsbus 0.2
            data["rpn_lam"] = data.pop("rpn_lambda")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"not a wsbus detector config: unknown key(s) {unknown}")
        return cls(**dict(data))

    def as_dict(self) -> dict:
        """Plain data (JSON- and ``torch.load(weights_only=True)``-safe); ``DetectorConfig(**d)`` rebuilds it."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# Per-backbone defaults (only what differs from the reference). ``tiny`` is sized for 128 px images on a CPU (its
# canvas, ``max_size``, is 128 px square: the phantom's side, which a phantom image fills):
# proposal and RoI counts scaled down with the image area (128 px vs 600x1000 px), because on a CPU the RPN's NMS
# and RoIAlign's backward dominate a step and both grow with these counts.
_PRESET_FIELDS: dict = {
    "vgg16": {},
    "resnet18": {},
    "resnet50": {"representation_size": 1024},
    "tiny": {"min_size": 128, "max_size": 128, "anchor_sizes": (16, 32, 64), "representation_size": 128,
             "rpn_pre_nms_top_n": {"training": 1000, "testing": 600},
             "rpn_post_nms_top_n": {"training": 300, "testing": 100}, "box_batch_size_per_image": 64},
}
#: The default :class:`DetectorConfig` of every backbone.
PRESETS = {name: DetectorConfig(backbone=name, **fields) for name, fields in _PRESET_FIELDS.items()}
