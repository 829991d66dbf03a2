""":func:`detect`: a detector in eval mode over :class:`wsbus.data.Sample` objects, what evaluation, self-training
and the experiments use. Every image is padded to the detector's fixed canvas (:mod:`wsbus.models.transform`), so
an image's detections do not depend on ``batch_size`` or on the other images of its batch.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Union

import torch
from torch import nn

from ..data.formats import Sample
from ..distributed import model_device

__all__ = ["detect", "DETECTION_KEYS"]

Device = Union[str, torch.device, None]
#: The keys of one image's detections.
DETECTION_KEYS = ("boxes", "labels", "scores")


def detect(model: nn.Module, samples: Sequence[Sample], *, device: Device = None,
           batch_size: int = 16) -> List[Dict[str, torch.Tensor]]:
    """Run a detector in eval mode over samples: one ``dict(boxes, labels, scores)`` per sample, on the CPU.

    Parameters
    ----------
    model : a torchvision-style detector (e.g. :func:`wsbus.models.build_detector`); its train/eval mode is
        restored afterwards.
    samples : the images (their boxes, if any, are not used).
    device : where to run; default the model's device. The model is moved there.
    batch_size : images per forward pass.

    Returns
    -------
    list of dict with ``boxes`` float [D, 4] (input pixel coordinates), ``labels`` int64 [D], ``scores`` [D].

    Taught in ``book/07_self_training.md``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    samples = list(samples)
    for k, s in enumerate(samples):
        if not isinstance(s, Sample):
            raise TypeError(f"item {k}: expected a wsbus.data.Sample, got {type(s).__name__}")
    dev = model_device(model, device)
    model.to(dev)
    was_training = model.training
    model.eval()
    out: List[Dict[str, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for start in range(0, len(samples), batch_size):
                chunk = samples[start:start + batch_size]
                for s, det in zip(chunk, model([s.to_tensor(torch.float32).to(dev) for s in chunk])):
                    missing = [k for k in DETECTION_KEYS if k not in det]
                    if missing:
                        raise KeyError(f"sample {s.id!r}: the detector's output lacks {missing} (got {sorted(det)})")
                    out.append({k: det[k].detach().cpu() for k in DETECTION_KEYS})
    finally:
        model.train(was_training)
    return out
