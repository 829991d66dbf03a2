"""Detector models: :func:`build_detector` returns the joint weakly/semi-supervised Faster R-CNN.

The package reads like torchvision's ``detection/``: one module per stage (``transform``, ``rpn``,
``roi_heads``), ``checks`` for the inputs, ``config`` for every setting, ``backbones``, and ``detector`` tying them
together.
"""
from ._utils import LOSS_KEYS, STRONG_LOSS_KEYS, is_weak_target
from .backbones import BACKBONES, build_backbone
from .config import PRESETS, DetectorConfig
from .detector import WeakSemiFasterRCNN, build_detector
from .roi_heads import WeakSemiRoIHeads
from .rpn import CachedAnchorGenerator, WeakSemiRPN
from .transform import GrayscaleRCNNTransform

__all__ = ["BACKBONES", "LOSS_KEYS", "STRONG_LOSS_KEYS", "PRESETS", "DetectorConfig", "WeakSemiFasterRCNN",
           "WeakSemiRPN", "WeakSemiRoIHeads", "CachedAnchorGenerator", "GrayscaleRCNNTransform", "build_backbone",
           "build_detector", "is_weak_target"]
