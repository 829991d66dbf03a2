"""Drawing detections on a scan: :func:`draw_detections`, the overlays ``wsbus predict`` writes."""
from __future__ import annotations

from typing import Any, Tuple, Union

import numpy as np
import torch

from ..data.formats import CLASSES
from ..viz.samples import CLASS_COLORS

__all__ = ["draw_detections"]


def _hex_rgb(color: str) -> Tuple[int, int, int]:
    color = color.lstrip("#")
    return tuple(int(color[i:i + 2], 16) for i in (0, 2, 4))


def draw_detections(image: Union[np.ndarray, torch.Tensor], boxes: Any, labels: Any, scores: Any = None, *,
                    width: int = 2) -> np.ndarray:
    """An RGB ``uint8`` ``H x W x 3`` picture of an image with its detections: boxes coloured by class (the
    colours of :mod:`wsbus.viz`, benign green, malignant red) captioned ``"<class> <score>"``, drawn with
    ``torchvision.utils.draw_bounding_boxes``.

    ``image`` is ``uint8`` ``H x W``, ``H x W x 3`` or ``[C, H, W]``; boxes ``[D, 4]`` pixel edges (the outline is
    drawn on the outermost pixels inside each box).

    Taught in ``book/14_your_own_scans.md``.
    """
    from torchvision.utils import draw_bounding_boxes

    t = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if t.ndim == 2:
        t = t[None]
    elif t.ndim == 3 and t.shape[0] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(2, 0, 1)
    if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"draw_detections: expected a uint8 image H x W, H x W x 3 or [C, H, W], got "
                         f"{t.dtype} of shape {tuple(t.shape)}")
    t = t.expand(3, -1, -1).contiguous() if t.shape[0] == 1 else t.contiguous()
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).clone()
    if len(b):
        h, w = t.shape[1:]
        b[:, 2:] -= 1
        b[:, 0::2] = b[:, 0::2].clamp(0, w - 1)
        b[:, 1::2] = b[:, 1::2].clamp(0, h - 1)
        b[:, 2:] = torch.maximum(b[:, 2:], b[:, :2])
        lab = [int(x) for x in torch.as_tensor(labels).reshape(-1)]
        sc = [float(x) for x in torch.as_tensor(scores).reshape(-1)] if scores is not None else None
        captions = [f"{CLASSES[k] if 0 <= k < len(CLASSES) else k}" + (f" {sc[j]:.2f}" if sc else "")
                    for j, k in enumerate(lab)]
        colors = [_hex_rgb(CLASS_COLORS.get(k, "#ffbf00")) for k in lab]
        t = draw_bounding_boxes(t, b, labels=captions, colors=colors, width=width, label_colors="white",
                                label_background_colors=colors, fill_labels=True)
    return t.permute(1, 2, 0).numpy()
