"""Input checks of the detector, where images and targets enter (as torchvision checks them in
``GeneralizedRCNN.forward``): every error names the image or target and what is wrong."""
from __future__ import annotations

import operator
from typing import Mapping

import torch
from torch import Tensor

from ._utils import is_weak_target

__all__ = ["check_images", "check_targets"]


def check_images(images) -> list[Tensor]:
    """The images as a list of float ``[C, H, W]`` tensors (C = 1 or 3); a ``[N, C, H, W]`` tensor is split.

    Raises ``TypeError`` / ``ValueError`` naming the image and what is wrong (type, shape, dtype, empty).
    """
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

def check_targets(targets, images: list[Tensor], num_classes: int) -> list[dict[str, Tensor]]:
    """Validate training targets and move them to their image's device (see :class:`wsbus.models.WeakSemiFasterRCNN`
    for the two kinds of target).

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
    k = int(num_classes)
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
            weak = {"image_label": label}
            if t.get("moi_box") is not None:
                weak["moi_box"] = _moi_box(t["moi_box"], where).to(device, non_blocking=True)
            if t.get("mil_weight") is not None:
                w = torch.as_tensor(t["mil_weight"], dtype=torch.float32)
                if w.numel() != 1 or not bool(torch.isfinite(w).all() & (w >= 0).all()):
                    raise ValueError(f"{where}: mil_weight must be one finite number >= 0, got {t['mil_weight']!r}")
                weak["mil_weight"] = w.reshape(()).to(device, non_blocking=True)
            checked.append(weak)
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
            flags.append((_bad_labels(labels, k).any() | _bad_boxes(boxes).any()).reshape(1))
        checked.append({"boxes": boxes, "labels": labels, **_pseudo_extras(t, boxes.shape[0], k, where, device)})
    if flags and bool(torch.cat([f.to(flags[0].device) for f in flags]).any()):
        _raise_bad_target(checked, k)
    return checked


def _moi_box(box, where: str) -> Tensor:
    if not isinstance(box, Tensor) or not box.is_floating_point() or box.numel() != 4:
        raise ValueError(f"{where}: moi_box must be one float box (4 numbers x1, y1, x2, y2), got {box!r}")
    box = box.reshape(1, 4)
    if not bool(torch.isfinite(box).all()) or not (box[0, 2] > box[0, 0] and box[0, 3] > box[0, 1]):
        raise ValueError(f"{where}: moi_box {box.reshape(-1).tolist()} is degenerate (need finite x1 < x2, y1 < y2)")
    return box


def _pseudo_extras(t: Mapping, n_boxes: int, k: int, where: str, device) -> dict:
    """The optional keys of a strong target made from pseudo-boxes: ``box_weights`` [K] (>= 0, the loss weight
    of the RoIs matched to each box), ``ignore_iou`` (proposals overlapping a box by more than this but less
    than the foreground threshold are ignored, not background) and ``mil`` (also train the MIL loss of the image's
    mass of interest on its ``image_label``)."""
    extra = {}
    if t.get("box_weights") is not None:
        w = t["box_weights"]
        if not isinstance(w, Tensor) or not w.is_floating_point() or w.shape != (n_boxes,):
            raise ValueError(f"{where}: box_weights must be a float tensor [{n_boxes}], got {w!r}")
        if not bool(torch.isfinite(w).all() & (w >= 0).all()):
            raise ValueError(f"{where}: box_weights must be finite and >= 0, got {w.tolist()}")
        extra["box_weights"] = w.to(device, non_blocking=True)
    if t.get("ignore_iou") is not None:
        v = float(t["ignore_iou"])
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{where}: ignore_iou must lie in [0, 1), got {t['ignore_iou']!r}")
        extra["ignore_iou"] = v
    if t.get("mil"):
        if "image_label" not in t:
            raise ValueError(f"{where}: a target with mil=True needs its image_label")
        label = int(t["image_label"])
        if not 0 <= label < k:
            raise ValueError(f"{where}: image_label {label} is out of range 0..{k - 1}")
        extra.update(mil=True, image_label=torch.full((), label, dtype=torch.int64, device=device))
    return extra


def _bad_labels(labels: Tensor, num_classes: int) -> Tensor:
    return (labels < 1) | (labels >= num_classes)


def _bad_boxes(boxes: Tensor) -> Tensor:
    return ~torch.isfinite(boxes).all(dim=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])


def _raise_bad_target(checked: list[dict[str, Tensor]], k: int) -> None:
    """The slow path of :func:`check_targets`: find the first bad target and say what is wrong."""
    for i, t in enumerate(checked):
        where = f"target {i}"
        if "image_label" in t and "boxes" not in t:
            value = int(t["image_label"])
            if not 0 <= value < k:
                raise ValueError(f"{where}: image_label {value} is out of range 0..{k - 1}")
            continue
        boxes, labels = t["boxes"], t["labels"]
        if bool(_bad_labels(labels, k).any()):
            raise ValueError(f"{where}: box labels must lie in 1..{k - 1} (0 is background), got "
                             f"{sorted(set(labels.tolist()))}")
        bad = _bad_boxes(boxes)
        if bool(bad.any()):
            j = int(bad.nonzero()[0, 0])
            raise ValueError(f"{where}: box {j} {boxes[j].tolist()} is degenerate (need finite "
                             f"x1 < x2 and y1 < y2)")
    raise AssertionError("a target failed validation but no bad target was found")  # pragma: no cover
