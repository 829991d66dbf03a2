"""Detector models: :func:`build_detector` returns the joint weakly/semi-supervised Faster R-CNN.

The package reads like torchvision's ``detection/``: one module per stage (``transform``, ``rpn``,
``roi_heads``), ``checks`` for the inputs, ``config`` for every setting, ``backbones``, and ``detector`` tying them
together; ``zoo`` holds the detectors shipped with the package (:func:`pretrained`).
"""
from ._utils import LOSS_KEYS, STRONG_LOSS_KEYS, is_weak_target
from .backbones import BACKBONES, build_backbone
from .config import PRESETS, DetectorConfig
from .detector import WeakSemiFasterRCNN, build_detector
from .roi_heads import WeakSemiRoIHeads
from .rpn import CachedAnchorGenerator, WeakSemiRPN
from .transform import CanvasRCNNTransform, GrayscaleRCNNTransform, canvas_side
from .zoo import available_models, model_card, pretrained, pretrained_path

__all__ = ["BACKBONES", "LOSS_KEYS", "STRONG_LOSS_KEYS", "PRESETS", "DetectorConfig", "WeakSemiFasterRCNN",
           "WeakSemiRPN", "WeakSemiRoIHeads", "CachedAnchorGenerator", "GrayscaleRCNNTransform", "build_backbone",
           "build_detector", "is_weak_target", "CanvasRCNNTransform", "canvas_side", "pretrained", "pretrained_path",
           "model_card", "available_models"]
