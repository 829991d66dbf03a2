"""The inputs of every detection metric: parsed and checked in one place, with the image named on error.

Inputs follow torchvision's detection convention, one dict per test image, in the same order:

- ``detections[i]``: ``boxes`` [D, 4] (x1, y1, x2, y2, pixels), ``labels`` [D] (1 benign, 2 malignant),
  ``scores`` [D] -- what a torchvision detector (and :class:`wsbus.models.WeakSemiFasterRCNN`) returns in eval mode;
- ``ground_truth[i]``: ``boxes`` [K, 4], ``labels`` [K] in {1, 2}; K = 0 for a normal image. A
  :class:`wsbus.data.Sample` with known boxes is accepted too. An optional ``image_label`` (0, 1, 2) overrides
  the image label derived from the boxes (malignant dominates, none = normal); ``id`` or ``image_id`` names the
  image in error messages and in per-image tables.

Boxes are continuous pixel-edge coordinates (``x2`` = last pixel + 1), the convention of torchvision and COCO:
width = ``x2 - x1``, no ``+ 1``. Tensors may live on any device (CPU, CUDA, ...); numpy arrays and lists are
accepted. Thresholds are checked here too: scores in [0, 1], IoU in (0, 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from ..data.formats import CLASSES, Sample

MASS_CLASSES: Tuple[int, int] = (1, 2)
"""The classes CorLoc, AP and the image scores are computed for: 1 benign, 2 malignant."""

Target = Union[Mapping[str, Any], Sample]


@dataclass(frozen=True)
class Pred:
    """One image's detections, checked: ``boxes`` [D, 4] floating, ``labels`` [D] int64, ``scores`` [D] floating."""

    boxes: Tensor
    labels: Tensor
    scores: Tensor

    def as_dict(self) -> dict:
        """The torchvision-style dict again (for passing on to another metric)."""
        return {"boxes": self.boxes, "labels": self.labels, "scores": self.scores}


@dataclass(frozen=True)
class Truth:
    """One image's ground truth, checked: ``boxes`` [K, 4], ``labels`` [K] in {1, 2}, ``image_label`` 0/1/2.

    ``name`` is how error messages call the image (``ground_truth[3] (image 'case_7')``); ``image_id`` is its
    ``id`` / ``image_id`` as a string, or ``None`` when the input gives none.
    """

    boxes: Tensor
    labels: Tensor
    image_label: int
    name: str
    image_id: Optional[str]

    def as_dict(self) -> dict:
        """The dict form again, with ``image_label`` (and ``id`` when known)."""
        out = {"boxes": self.boxes, "labels": self.labels, "image_label": self.image_label}
        if self.image_id is not None:
            out["id"] = self.image_id
        return out


def check_score_thresh(value: Any, name: str = "score_thresh") -> float:
    """``value`` as a float in [0, 1] (a detection counts when ``score >= value``), else one clear ValueError."""
    v = _number(value, name, "[0, 1]")
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def check_iou_thresh(value: Any, name: str = "iou_thresh") -> float:
    """``value`` as a float in (0, 1), the open interval (IoU 0 would accept any box, 1 only a perfect one)."""
    v = _number(value, name, "(0, 1)")
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return v


def _number(value: Any, name: str, interval: str) -> float:
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}") from None
    if math.isnan(v):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return v


def _image_ident(item: Any) -> Optional[Any]:
    if isinstance(item, Sample):
        return item.id
    if isinstance(item, Mapping):
        for key in ("id", "image_id"):
            if key in item:
                v = item[key]
                return v.item() if isinstance(v, Tensor) and v.numel() == 1 else v
    return None


def _image_name(i: int, item: Any, what: str) -> str:
    ident = _image_ident(item)
    return f"{what}[{i}]" + (f" (image {ident!r})" if ident is not None else "")


def _tensor(x: Any, name: str, key: str, floating: bool) -> Tensor:
    if x is None:
        raise ValueError(f"{name}: '{key}' is None")
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name}: '{key}' cannot be read as a tensor ({e})") from None
    if floating:
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name}: '{key}' must be real numbers, got dtype {t.dtype}")
        if not t.is_floating_point():
            t = t.to(torch.float32)
    else:
        if t.is_floating_point():
            if t.numel() and not bool(torch.all(t == torch.round(t))):
                raise ValueError(f"{name}: '{key}' must hold integer class indices, got {t.flatten()[:5].tolist()}")
        elif t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name}: '{key}' must be integer class indices, got dtype {t.dtype}")
        t = t.to(torch.int64)
    return t


def _boxes(x: Any, name: str) -> Tensor:
    t = _tensor(x, name, "boxes", floating=True)
    if t.numel() == 0:
        return t.reshape(0, 4)
    if t.ndim != 2 or t.shape[1] != 4:
        raise ValueError(f"{name}: 'boxes' must have shape [N, 4] (x1, y1, x2, y2), got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: 'boxes' has non-finite coordinates")
    bad = (t[:, 2] < t[:, 0]) | (t[:, 3] < t[:, 1])
    if bool(bad.any()):
        k = int(torch.nonzero(bad)[0])
        raise ValueError(f"{name}: box {k} {t[k].tolist()} is inverted (need x1 <= x2 and y1 <= y2)")
    return t


def _vector(x: Any, name: str, key: str, n: int, floating: bool) -> Tensor:
    t = _tensor(x, name, key, floating)
    if t.numel() == 0:
        t = t.reshape(0)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"{name}: '{key}' must have shape [{n}] (one per box), got {tuple(t.shape)}")
    return t


def _as_list(items: Any, what: str) -> list:
    if isinstance(items, (Mapping, Sample, Tensor, np.ndarray, str)):
        raise TypeError(f"{what} must be a list with one entry per image, got a single {type(items).__name__}")
    try:
        return list(items)
    except TypeError:
        raise TypeError(f"{what} must be a list with one entry per image, got {type(items).__name__}") from None


def parse_detections(detections: Sequence[Mapping[str, Any]]) -> List[Pred]:
    """Check a list of detection dicts (one per image) and return them as :class:`Pred`."""
    out = []
    for i, d in enumerate(_as_list(detections, "detections")):
        name = _image_name(i, d, "detections")
        if not isinstance(d, Mapping):
            raise TypeError(f"{name} must be a dict with 'boxes', 'labels' and 'scores', got {type(d).__name__}")
        missing = [k for k in ("boxes", "labels", "scores") if k not in d]
        if missing:
            raise ValueError(f"{name} is missing {missing} (needs 'boxes', 'labels' and 'scores')")
        boxes = _boxes(d["boxes"], name)
        labels = _vector(d["labels"], name, "labels", boxes.shape[0], floating=False).to(boxes.device)
        scores = _vector(d["scores"], name, "scores", boxes.shape[0], floating=True).to(boxes.device)
        if not bool(torch.isfinite(scores).all()):
            raise ValueError(f"{name}: 'scores' has NaN or infinite values")
        out.append(Pred(boxes, labels, scores))
    return out


def _truth_fields(g: Any, name: str) -> Tuple[Any, Any, Any]:
    if isinstance(g, Sample):
        if not g.is_strong:
            raise ValueError(f"{name} is a weak sample (boxes unknown); evaluation needs ground-truth boxes")
        return g.boxes, g.labels, g.image_label
    if isinstance(g, Mapping):
        missing = [k for k in ("boxes", "labels") if k not in g]
        if missing:
            raise ValueError(f"{name} is missing {missing} (needs 'boxes' and 'labels'; empty for a normal image)")
        return g["boxes"], g["labels"], g.get("image_label")
    raise TypeError(f"{name} must be a dict with 'boxes' and 'labels' or a Sample, got {type(g).__name__}")


def parse_truth(ground_truth: Sequence[Target]) -> List[Truth]:
    """Check a list of ground-truth dicts or :class:`wsbus.data.Sample` (one per image); return :class:`Truth`."""
    out = []
    for i, g in enumerate(_as_list(ground_truth, "ground_truth")):
        name = _image_name(i, g, "ground_truth")
        raw_boxes, raw_labels, image_label = _truth_fields(g, name)
        boxes = _boxes(raw_boxes, name)
        labels = _vector(raw_labels, name, "labels", boxes.shape[0], floating=False).to(boxes.device)
        if labels.numel() and not bool(((labels == 1) | (labels == 2)).all()):
            raise ValueError(f"{name}: ground-truth labels must be 1 (benign) or 2 (malignant), got "
                             f"{sorted(set(labels.tolist()))}")
        derived = int(labels.max()) if labels.numel() else 0
        if image_label is None:
            image_label = derived
        else:
            image_label = int(image_label.item() if isinstance(image_label, Tensor) else image_label)
            if image_label not in (0, 1, 2):
                raise ValueError(f"{name}: image_label must be 0, 1 or 2, got {image_label}")
            if (image_label == 0) != (derived == 0):
                raise ValueError(f"{name}: image_label {image_label} ({CLASSES[image_label]}) contradicts its "
                                 f"{labels.numel()} ground-truth box(es)")
        ident = _image_ident(g)
        out.append(Truth(boxes, labels, image_label, name, None if ident is None else str(ident)))
    return out


def parse_pair(detections: Sequence[Mapping[str, Any]],
               ground_truth: Sequence[Target]) -> Tuple[List[Pred], List[Truth]]:
    """:func:`parse_detections` and :func:`parse_truth`, checked to list the same number of images."""
    preds, truths = parse_detections(detections), parse_truth(ground_truth)
    if len(preds) != len(truths):
        raise ValueError(f"detections has {len(preds)} images but ground_truth has {len(truths)}; "
                         "they must list the same test images in the same order")
    return preds, truths


def pairwise_iou(a: Tensor, b: Tensor, voc_plus_one: bool = False) -> Tensor:
    """IoU matrix [len(a), len(b)] by torchvision's ``box_iou``, optionally in the VOC (+1 pixel) convention.

    At least float32 (float64 inputs stay float64); ``b`` is moved to ``a``'s device.
    """
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b = a.to(dtype), b.to(device=a.device, dtype=dtype)
    if voc_plus_one:
        # VOC / the reference code treat x2, y2 as inclusive pixel indices: width = x2 - x1 + 1, and the
        # intersection width is min(x2) - max(x1) + 1. Shifting x2, y2 of both boxes by one pixel gives exactly that.
        one = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=dtype, device=a.device)
        a, b = a + one, b + one
    return box_iou(a, b)
