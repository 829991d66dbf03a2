"""Small helpers shared by the detector's modules (as torchvision's ``detection/_utils.py``: public names in a
private module). Nothing here is specific to one stage of the detector."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

__all__ = ["LOSS_KEYS", "STRONG_LOSS_KEYS", "is_weak_target", "full_precision", "zero_like_graph", "take_rows"]

#: The keys of the training loss dict, always all present (graph-connected zeros when a batch has no image of the
#: kind that produces a loss).
LOSS_KEYS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mil")
#: The terms of the strongly supervised loss L_s (the four Faster R-CNN losses).
STRONG_LOSS_KEYS = LOSS_KEYS[:4]


def is_weak_target(target: Mapping[str, Any]) -> bool:
    """True for a weak target (no ``"boxes"``, or ``boxes=None``); it must then carry ``"image_label"``.
    """
    return target.get("boxes") is None


def full_precision(t: Tensor) -> Tensor:
    """``t`` in float32 when it is a half/bfloat16 tensor (from an autocast region), unchanged otherwise.

    Box coordinates need float32: bfloat16 has 8 significant bits, so a coordinate near 600 px would be rounded
    to a multiple of 4 px (float16: of 0.5 px). torchvision's ``BoxCoder.decode`` casts the anchors / proposals
    to the dtype of the predicted deltas, so under ``torch.autocast`` every proposal and detection would lose
    that precision; decoding float32 deltas keeps the boxes exact and costs nothing measurable.
    """
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def zero_like_graph(*tensors: Tensor) -> Tensor:
    """An exact scalar zero connected to the graph of ``tensors``, so every parameter that produced them gets a
    zero gradient (which keeps DDP's reducer and the optimisers' step counts consistent). float32 under autocast,
    like the losses it stands in for."""
    total = tensors[0].sum() * 0.0
    for t in tensors[1:]:
        total = total + t.sum() * 0.0
    return full_precision(total)


def take_rows(t: Tensor, idx: list[int]) -> Tensor:
    """``t[idx]`` along dim 0 without a host-to-device copy of the index: ``t`` itself when ``idx`` is every row,
    a slice (a view) when it is a contiguous run, else a stack of views."""
    if len(idx) == t.shape[0]:
        return t
    if idx == list(range(idx[0], idx[0] + len(idx))):
        return t[idx[0]: idx[0] + len(idx)]
    return torch.stack([t[i] for i in idx])
