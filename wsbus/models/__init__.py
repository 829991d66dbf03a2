"""Detector models: :func:`build_detector` returns the joint weakly/semi-supervised Faster R-CNN.

Taught in ``book/03_faster_rcnn.md``.
"""
from .backbones import BACKBONES, build_backbone
from .detector import LOSS_KEYS, PRESETS, WeakSemiFasterRCNN, build_detector, is_weak_target

__all__ = ["BACKBONES", "LOSS_KEYS", "PRESETS", "WeakSemiFasterRCNN", "build_backbone", "build_detector",
           "is_weak_target"]
